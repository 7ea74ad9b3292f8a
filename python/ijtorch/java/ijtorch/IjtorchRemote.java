package ijtorch;

import ij.IJ;
import ij.ImagePlus;
import ij.ImageStack;
import ij.Prefs;
import ij.WindowManager;
import ij.measure.Calibration;
import ij.measure.ResultsTable;
import ij.plugin.frame.RoiManager;
import ij.process.LUT;

import java.io.ByteArrayOutputStream;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * Runs an ijtorch command on an ijtorch server ("ijtorch serve") when no Python handler is
 * registered in this ImageJ: transport and applying results only; the logic runs in Python on the
 * server.
 *
 * <p>The server is {@code Prefs "ijtorch.server"}, else the system property {@code ijtorch.server},
 * else the environment variable {@code IJTORCH_SERVER} (e.g. {@code http://127.0.0.1:8765}), else
 * {@code server.url} in {@code Fiji.app/ijtorch.properties} (written by {@code ijtorch install-fiji}); a
 * token comes from the system property {@code ijtorch.token} or {@code IJTORCH_TOKEN}. The request
 * carries the command name, the macro options and the current image as
 * {@code [uint32 LE header length][JSON header][raw little-endian pixels, TZCYX]}; the reply, in
 * the same format, holds images (label images get the sent LUT and display range), polygon ROIs
 * for the ROI Manager and ResultsTable columns, applied like ijtorch's in-process commands do.
 */
public final class IjtorchRemote {

    static final String MEDIA_TYPE = "application/x-ijtorch";
    private static HttpClient client;

    private IjtorchRemote() {
    }

    /** The configured server URL without a trailing slash, or null. */
    public static String serverUrl() {
        String url = Prefs.get("ijtorch.server", "");
        if (url == null || url.isEmpty()) {
            url = System.getProperty("ijtorch.server", "");
        }
        if (url == null || url.isEmpty()) {
            url = System.getenv("IJTORCH_SERVER");
        }
        if (url == null || url.isEmpty()) {
            url = installedProperty("server.url");  // written by "ijtorch install-fiji --server URL"
        }
        if (url == null || url.trim().isEmpty()) {
            return null;
        }
        url = url.trim();
        return url.endsWith("/") ? url.substring(0, url.length() - 1) : url;
    }

    /** A key of Fiji.app/ijtorch.properties (written by "ijtorch install-fiji"), or null. */
    static String installedProperty(String key) {
        String dir = ij.IJ.getDirectory("imagej");
        if (dir == null) {
            return null;
        }
        java.io.File file = new java.io.File(dir, "ijtorch.properties");
        if (!file.isFile()) {
            return null;
        }
        java.util.Properties props = new java.util.Properties();
        try (java.io.InputStream in = new java.io.FileInputStream(file)) {
            props.load(in);
        } catch (java.io.IOException e) {
            return null;
        }
        return props.getProperty(key);
    }

    public static boolean configured() {
        return serverUrl() != null;
    }

    static String token() {
        String token = System.getProperty("ijtorch.token", "");
        if (token.isEmpty()) {
            token = System.getenv("IJTORCH_TOKEN");
        }
        if (token == null || token.isEmpty()) {
            token = installedProperty("server.token");
        }
        return token == null || token.isEmpty() ? null : token;
    }

    private static synchronized HttpClient http() {
        if (client == null) {
            client = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(10)).build();
        }
        return client;
    }

    private static HttpRequest.Builder request(String path) {
        HttpRequest.Builder b = HttpRequest.newBuilder(URI.create(serverUrl() + path)).timeout(Duration.ofHours(2));
        String token = token();
        if (token != null) {
            b.header("Authorization", "Bearer " + token);
        }
        return b;
    }

    /** Dialog spec of a remote command (as IjtorchRegistry.dialogSpec), or null if unknown. */
    @SuppressWarnings("unchecked")
    public static String dialogSpec(String command) throws Exception {
        Map<String, Object> commands = (Map<String, Object>) commandList().get("commands");
        Object spec = commands == null ? null : commands.get(command);
        return spec == null ? null : spec.toString();
    }

    /** Puts the server's commands into ImageJ's command table (for an ImageJ without Python). */
    @SuppressWarnings("unchecked")
    public static int installCommands() throws Exception {
        Map<String, Object> commands = (Map<String, Object>) commandList().get("commands");
        for (String name : commands.keySet()) {
            IjtorchRegistry.installMenuCommand(name, "ijtorch.IjtorchCommand(\"" + name + "\")");
        }
        return commands.size();
    }

    @SuppressWarnings("unchecked")
    private static Map<String, Object> commandList() throws Exception {
        HttpResponse<String> r = http().send(request("/imagej/commands").GET().build(),
                HttpResponse.BodyHandlers.ofString());
        if (r.statusCode() != 200) {
            throw new IllegalStateException("server " + serverUrl() + ": HTTP " + r.statusCode() + ": " + r.body());
        }
        return (Map<String, Object>) new Json(r.body()).value();
    }

    /** Runs {@code command} with {@code options} on the server; returns null or an error message. */
    public static String runCommand(String command, String options) {
        try {
            ImagePlus imp = WindowManager.getCurrentImage();
            if (imp == null) {
                return command + " needs an open image (open one or select its window)";
            }
            byte[] body = encodeRequest(command, options, imp);
            HttpRequest req = request("/imagej/command").header("Content-Type", MEDIA_TYPE)
                    .POST(HttpRequest.BodyPublishers.ofByteArray(body)).build();
            IJ.showStatus(command + ": running on " + serverUrl());
            HttpResponse<byte[]> r = http().send(req, HttpResponse.BodyHandlers.ofByteArray());
            if (r.statusCode() != 200) {
                String text = new String(r.body(), StandardCharsets.UTF_8);
                try {
                    Object msg = ((Map<?, ?>) new Json(text).value()).get("error");
                    text = msg == null ? text : msg.toString();
                } catch (RuntimeException notJson) {
                    // keep the raw text
                }
                return "server " + serverUrl() + " answered HTTP " + r.statusCode() + ": " + text;
            }
            apply(r.body());
            return null;
        } catch (java.net.ConnectException e) {
            return "cannot reach the ijtorch server at " + serverUrl() + " (is 'ijtorch serve' running?)";
        } catch (Exception e) {
            return e.getClass().getSimpleName() + ": " + e.getMessage();
        }
    }

    // ------------------------------------------------------------------ request

    static byte[] encodeRequest(String command, String options, ImagePlus imp) {
        int nc = imp.getNChannels(), nz = imp.getNSlices(), nt = imp.getNFrames();
        int w = imp.getWidth(), h = imp.getHeight(), depth = imp.getBitDepth();
        ImageStack stack = imp.getStack();
        boolean rgb = depth == 24;
        String dtype = depth == 8 || rgb ? "|u1" : depth == 16 ? "<u2" : "<f4";
        int bytesPerPixel = rgb ? 3 : depth / 8;
        Calibration cal = imp.getCalibration();
        StringBuilder head = new StringBuilder("{");
        head.append("\"command\":").append(Json.quote(command));
        head.append(",\"options\":").append(Json.quote(options));
        head.append(",\"title\":").append(Json.quote(imp.getTitle()));
        head.append(",\"axes\":\"TZCYX").append(rgb ? "S" : "").append('"');
        head.append(",\"calibration\":{\"pixel_width\":").append(Json.number(cal.pixelWidth))
                .append(",\"pixel_height\":").append(Json.number(cal.pixelHeight))
                .append(",\"voxel_depth\":").append(Json.number(cal.pixelDepth))
                .append(",\"unit\":").append(Json.quote(cal.getUnit()))
                .append(",\"frame_interval\":").append(Json.number(cal.frameInterval))
                .append(",\"time_unit\":").append(Json.quote(cal.getTimeUnit())).append('}');
        head.append(",\"arrays\":[{\"name\":\"image\",\"dtype\":\"").append(dtype).append("\",\"shape\":[")
                .append(nt).append(',').append(nz).append(',').append(nc).append(',').append(h).append(',').append(w)
                .append(rgb ? ",3" : "").append("]}]}");
        byte[] header = head.toString().getBytes(StandardCharsets.UTF_8);
        long n = (long) w * h * bytesPerPixel * stack.getSize();
        if (4L + header.length + n > Integer.MAX_VALUE) {
            throw new IllegalArgumentException("the image is too large to send (over 2 GiB)");
        }
        ByteBuffer buf = ByteBuffer.allocate((int) (4 + header.length + n)).order(ByteOrder.LITTLE_ENDIAN);
        buf.putInt(header.length).put(header);
        for (int i = 1; i <= stack.getSize(); i++) {  // stack order: C fastest, then Z, then T
            Object pixels = stack.getPixels(i);
            if (pixels instanceof byte[]) {
                buf.put((byte[]) pixels);
            } else if (pixels instanceof short[]) {
                for (short v : (short[]) pixels) {
                    buf.putShort(v);
                }
            } else if (pixels instanceof float[]) {
                for (float v : (float[]) pixels) {
                    buf.putFloat(v);
                }
            } else if (pixels instanceof int[]) {
                for (int c : (int[]) pixels) {
                    buf.put((byte) (c >> 16)).put((byte) (c >> 8)).put((byte) c);
                }
            } else {
                throw new IllegalArgumentException("unsupported pixel array in plane " + i);
            }
        }
        return buf.array();
    }

    // ------------------------------------------------------------------ reply

    @SuppressWarnings("unchecked")
    static void apply(byte[] body) throws Exception {
        ByteBuffer all = ByteBuffer.wrap(body).order(ByteOrder.LITTLE_ENDIAN);
        int hlen = all.getInt(0);
        Map<String, Object> header = (Map<String, Object>) new Json(
                new String(body, 4, hlen, StandardCharsets.UTF_8)).value();
        Map<String, ByteBuffer> arrays = new HashMap<>();
        Map<String, List<Object>> shapes = new HashMap<>();
        int offset = 4 + hlen;
        for (Object o : (List<Object>) header.get("arrays")) {
            Map<String, Object> spec = (Map<String, Object>) o;
            String name = (String) spec.get("name");
            List<Object> shape = (List<Object>) spec.get("shape");
            long count = 1;
            for (Object s : shape) {
                count *= ((Number) s).longValue();
            }
            int size = (int) (count * itemSize((String) spec.get("dtype")));
            ByteBuffer slice = ByteBuffer.wrap(body, offset, size).slice().order(ByteOrder.LITTLE_ENDIAN);
            arrays.put(name, slice);
            shapes.put(name, shape);
            offset += size;
        }
        LUT lut = null;
        if (header.get("lut") != null) {
            ByteBuffer b = arrays.get((String) header.get("lut"));
            byte[] r = new byte[256], g = new byte[256], bl = new byte[256];
            for (int i = 0; i < 256; i++) {
                r[i] = b.get(3 * i);
                g[i] = b.get(3 * i + 1);
                bl[i] = b.get(3 * i + 2);
            }
            lut = new LUT(r, g, bl);
        }
        for (Object o : (List<Object>) header.get("images")) {
            Map<String, Object> im = (Map<String, Object>) o;
            String name = (String) im.get("array");
            showImage(im, arrays.get(name), shapes.get(name), lut);
        }
        Map<String, Object> rois = (Map<String, Object>) header.get("rois");
        if (rois != null) {
            List<Object> names = (List<Object>) rois.get("names");
            RoiManager rm = RoiManager.getInstance();
            if (rm == null) {
                rm = new RoiManager();
            }
            IjtorchRois.addPolygons(rm, floats(arrays.get("roi_x")), floats(arrays.get("roi_y")),
                    ints(arrays.get("roi_offsets")), names.toArray(new String[0]), ints(arrays.get("roi_c")),
                    ints(arrays.get("roi_z")), ints(arrays.get("roi_t")), (Boolean) rois.get("integer"),
                    (Boolean) rois.get("reset"));
        }
        for (Object o : (List<Object>) header.get("tables")) {
            Map<String, Object> table = (Map<String, Object>) o;
            String title = (String) table.get("title");
            ResultsTable rt = "Results".equals(title) ? ResultsTable.getResultsTable() : new ResultsTable();
            rt.reset();
            for (Object c : (List<Object>) table.get("columns")) {
                Map<String, Object> col = (Map<String, Object>) c;
                String cname = (String) col.get("name");
                if (col.containsKey("array")) {
                    ByteBuffer b = arrays.get((String) col.get("array"));
                    double[] values = new double[b.capacity() / 8];
                    b.asDoubleBuffer().get(values);
                    rt.setValues(cname, values);
                } else {
                    List<Object> text = (List<Object>) col.get("text");
                    for (int row = 0; row < text.size(); row++) {
                        rt.setValue(cname, row, String.valueOf(text.get(row)));
                    }
                }
            }
            rt.show(title);
        }
        Object status = header.get("status");
        if (status != null) {
            IJ.showStatus(status.toString());
        }
    }

    @SuppressWarnings("unchecked")
    private static void showImage(Map<String, Object> im, ByteBuffer b, List<Object> shape, LUT lut) {
        int nt = ((Number) shape.get(0)).intValue(), nz = ((Number) shape.get(1)).intValue();
        int nc = ((Number) shape.get(2)).intValue(), h = ((Number) shape.get(3)).intValue();
        int w = ((Number) shape.get(4)).intValue();
        int itemSize = b.capacity() / Math.max(1, nt * nz * nc * h * w);
        boolean isFloat = itemSize == 4;
        ImageStack stack = new ImageStack(w, h);
        int len = w * h;
        for (int i = 0; i < nt * nz * nc; i++) {
            if (itemSize == 1) {
                byte[] p = new byte[len];
                b.get(p);
                stack.addSlice("", p);
            } else if (itemSize == 2) {
                short[] p = new short[len];
                b.asShortBuffer().get(p);
                b.position(b.position() + 2 * len);
                stack.addSlice("", p);
            } else if (isFloat) {
                float[] p = new float[len];
                b.asFloatBuffer().get(p);
                b.position(b.position() + 4 * len);
                stack.addSlice("", p);
            } else {
                throw new IllegalArgumentException("unsupported image item size " + itemSize);
            }
        }
        ImagePlus imp = new ImagePlus((String) im.get("title"), stack);
        imp.setDimensions(nc, nz, nt);
        if ((nc > 1 ? 1 : 0) + (nz > 1 ? 1 : 0) + (nt > 1 ? 1 : 0) > 1) {
            imp.setOpenAsHyperStack(true);
        }
        Map<String, Object> c = (Map<String, Object>) im.get("calibration");
        Calibration cal = imp.getCalibration();
        cal.pixelWidth = ((Number) c.get("pixel_width")).doubleValue();
        cal.pixelHeight = ((Number) c.get("pixel_height")).doubleValue();
        cal.pixelDepth = ((Number) c.get("voxel_depth")).doubleValue();
        cal.setUnit((String) c.get("unit"));
        cal.frameInterval = ((Number) c.get("frame_interval")).doubleValue();
        cal.setTimeUnit((String) c.get("time_unit"));
        if (Boolean.TRUE.equals(im.get("labels")) && lut != null) {
            imp.setLut(lut);
            imp.setDisplayRange(((Number) im.get("display_min")).doubleValue(),
                    ((Number) im.get("display_max")).doubleValue());
        } else {
            imp.resetDisplayRange();
        }
        imp.show();
    }

    private static int itemSize(String dtype) {
        return Integer.parseInt(dtype.substring(2));
    }

    private static float[] floats(ByteBuffer b) {
        float[] out = new float[b.capacity() / 4];
        b.asFloatBuffer().get(out);
        return out;
    }

    private static int[] ints(ByteBuffer b) {
        int[] out = new int[b.capacity() / 4];
        b.asIntBuffer().get(out);
        return out;
    }

    // ------------------------------------------------------------------ JSON

    /** A small JSON reader (objects, arrays, strings, numbers, true/false/null) and writer helpers. */
    static final class Json {
        private final String s;
        private int i;

        Json(String text) {
            this.s = text;
        }

        Object value() {
            Object v = read();
            skip();
            if (i != s.length()) {
                throw new IllegalArgumentException("trailing characters in JSON at " + i);
            }
            return v;
        }

        private void skip() {
            while (i < s.length() && Character.isWhitespace(s.charAt(i))) {
                i++;
            }
        }

        private Object read() {
            skip();
            if (i >= s.length()) {
                throw new IllegalArgumentException("unexpected end of JSON");
            }
            char c = s.charAt(i);
            if (c == '{') {
                Map<String, Object> m = new LinkedHashMap<>();
                i++;
                skip();
                if (s.charAt(i) == '}') {
                    i++;
                    return m;
                }
                while (true) {
                    skip();
                    String key = string();
                    skip();
                    expect(':');
                    m.put(key, read());
                    skip();
                    if (s.charAt(i) == ',') {
                        i++;
                    } else {
                        expect('}');
                        return m;
                    }
                }
            }
            if (c == '[') {
                List<Object> a = new ArrayList<>();
                i++;
                skip();
                if (s.charAt(i) == ']') {
                    i++;
                    return a;
                }
                while (true) {
                    a.add(read());
                    skip();
                    if (s.charAt(i) == ',') {
                        i++;
                    } else {
                        expect(']');
                        return a;
                    }
                }
            }
            if (c == '"') {
                return string();
            }
            if (s.startsWith("true", i)) {
                i += 4;
                return Boolean.TRUE;
            }
            if (s.startsWith("false", i)) {
                i += 5;
                return Boolean.FALSE;
            }
            if (s.startsWith("null", i)) {
                i += 4;
                return null;
            }
            int start = i;
            while (i < s.length() && "+-0123456789.eE".indexOf(s.charAt(i)) >= 0) {
                i++;
            }
            if (start == i) {
                throw new IllegalArgumentException("unexpected character '" + c + "' in JSON at " + i);
            }
            return Double.valueOf(s.substring(start, i));
        }

        private void expect(char c) {
            if (i >= s.length() || s.charAt(i) != c) {
                throw new IllegalArgumentException("expected '" + c + "' in JSON at " + i);
            }
            i++;
        }

        private String string() {
            expect('"');
            StringBuilder b = new StringBuilder();
            while (true) {
                char c = s.charAt(i++);
                if (c == '"') {
                    return b.toString();
                }
                if (c != '\\') {
                    b.append(c);
                    continue;
                }
                char e = s.charAt(i++);
                switch (e) {
                    case 'n': b.append('\n'); break;
                    case 't': b.append('\t'); break;
                    case 'r': b.append('\r'); break;
                    case 'b': b.append('\b'); break;
                    case 'f': b.append('\f'); break;
                    case 'u':
                        b.append((char) Integer.parseInt(s.substring(i, i + 4), 16));
                        i += 4;
                        break;
                    default: b.append(e);
                }
            }
        }

        static String quote(String text) {
            StringBuilder b = new StringBuilder("\"");
            for (char c : (text == null ? "" : text).toCharArray()) {
                if (c == '"' || c == '\\') {
                    b.append('\\').append(c);
                } else if (c < 0x20) {
                    b.append(String.format("\\u%04x", (int) c));
                } else {
                    b.append(c);
                }
            }
            return b.append('"').toString();
        }

        static String number(double v) {
            if (Double.isNaN(v) || Double.isInfinite(v)) {
                return "null";
            }
            return Double.toString(v);
        }
    }
}
