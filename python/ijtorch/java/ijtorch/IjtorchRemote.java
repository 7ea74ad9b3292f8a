package ijtorch;

import ij.CompositeImage;
import ij.IJ;
import ij.ImagePlus;
import ij.ImageStack;
import ij.Macro;
import ij.Prefs;
import ij.WindowManager;
import ij.gui.Roi;
import ij.io.FileInfo;
import ij.measure.Calibration;
import ij.measure.ResultsTable;
import ij.plugin.frame.RoiManager;
import ij.process.FloatPolygon;
import ij.process.LUT;

import java.awt.Color;
import java.io.File;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.StandardCopyOption;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * Runs ijtorch commands and {@code Ext.ijtorch...} macro functions on an ijtorch server ("ijtorch
 * serve") when no Python handler is registered in this ImageJ: transport and applying results
 * only; the logic runs in Python on the server.
 *
 * <p>The server is {@code Prefs "ijtorch.server"}, else the system property {@code ijtorch.server},
 * else the environment variable {@code IJTORCH_SERVER} (e.g. {@code http://127.0.0.1:8765}), else
 * {@code server.url} in {@code Fiji.app/ijtorch.properties} (written by {@code ijtorch install-fiji}); a
 * token comes from the system property {@code ijtorch.token} or {@code IJTORCH_TOKEN}. Messages are
 * {@code [uint32 LE header length][JSON header][raw little-endian arrays]} (see
 * {@code ijtorch/serve/_wire.py} and {@code ijtorch/serve/_imagej.py}). A command request carries
 * the command name, the macro options, the current image (TZCYX), the file it came from and, when
 * the server's catalog says the command reads them, the ROI Manager's ROIs and the open images that
 * options name. The reply holds images (label images get the sent LUT and display range), polygon
 * ROIs for the ROI Manager, colours for ROIs already there, ResultsTable columns, files to write,
 * log lines and values for macro functions, applied like ijtorch's in-process commands do.
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
        java.io.File file = installedProperties();
        if (file == null) {
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

    /**
     * Fiji.app/ijtorch.properties, found without depending on the working directory: next to the
     * folder holding this shim's jar (plugins/ or jars/, where install-fiji puts it), then the
     * launcher's directory properties, then ImageJ's own idea of its folder; null when none has it.
     */
    static java.io.File installedProperties() {
        List<java.io.File> dirs = new ArrayList<>();
        try {
            java.security.CodeSource source = IjtorchRemote.class.getProtectionDomain().getCodeSource();
            if (source != null && source.getLocation() != null) {
                java.io.File jar = new java.io.File(source.getLocation().toURI());
                for (java.io.File d = jar.getParentFile(); d != null && dirs.size() < 3; d = d.getParentFile()) {
                    dirs.add(d);
                }
            }
        } catch (Exception ignored) {
            // no code source (classes defined by ijtorch.attach): the properties below
        }
        for (String prop : new String[] {"imagej.dir", "fiji.dir", "ij.dir", "plugins.dir"}) {
            String d = System.getProperty(prop);
            if (d != null && !d.isEmpty()) {
                dirs.add(new java.io.File(d));
            }
        }
        String dir = ij.IJ.getDirectory("imagej");
        if (dir != null) {
            dirs.add(new java.io.File(dir));
        }
        for (java.io.File d : dirs) {
            java.io.File file = new java.io.File(d, "ijtorch.properties");
            if (file.isFile()) {
                return file;
            }
        }
        return null;
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
            // HTTP/1.1: the default (HTTP/2) makes every request try an h2c upgrade, which the
            // server (uvicorn) answers with a warning in its log per request
            client = HttpClient.newBuilder().version(HttpClient.Version.HTTP_1_1)
                    .connectTimeout(Duration.ofSeconds(10)).build();
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
    public static String dialogSpec(String command) throws Exception {
        Object spec = section(catalog(false), "commands").get(command);
        return spec == null ? null : spec.toString();
    }

    /**
     * Puts the server's commands into ImageJ's command table and its macro functions into the
     * registry (for an ImageJ without Python); returns the number of commands.
     */
    @SuppressWarnings("unchecked")
    public static int install() throws Exception {
        Map<String, Object> catalog = catalog(true);
        Map<String, Object> commands = section(catalog, "commands");
        for (String name : commands.keySet()) {
            IjtorchRegistry.installMenuCommand(name, "ijtorch.IjtorchCommand(\"" + name + "\")");
        }
        for (Map.Entry<String, Object> e : section(catalog, "functions").entrySet()) {
            List<Object> codes = (List<Object>) ((Map<String, Object>) e.getValue()).get("args");
            int[] types = new int[codes.size()];
            for (int i = 0; i < types.length; i++) {
                types[i] = ((Number) codes.get(i)).intValue();
            }
            IjtorchRegistry.registerFunction(e.getKey(), types);
        }
        return commands.size();
    }

    /** What the server runs: {@code GET /imagej/commands}, kept per server URL until {@code refresh}. */
    @SuppressWarnings("unchecked")
    private static synchronized Map<String, Object> catalog(boolean refresh) throws Exception {
        String url = serverUrl();
        if (refresh || catalog == null || !url.equals(catalogUrl)) {
            HttpResponse<String> r = http().send(request("/imagej/commands").GET().build(),
                    HttpResponse.BodyHandlers.ofString());
            if (r.statusCode() != 200) {
                throw new RemoteError("server " + url + " answered HTTP " + r.statusCode() + ": " + errorText(r.body()));
            }
            catalog = (Map<String, Object>) new Json(r.body()).value();
            catalogUrl = url;
        }
        return catalog;
    }

    private static Map<String, Object> catalog;
    private static String catalogUrl;

    @SuppressWarnings("unchecked")
    private static Map<String, Object> section(Map<String, Object> catalog, String key) {
        Object value = catalog.get(key);
        return value instanceof Map ? (Map<String, Object>) value : new LinkedHashMap<>();
    }

    /** Runs {@code command} with {@code options} on the server; returns null or an error message. */
    public static String runCommand(String command, String options) {
        try {
            ImagePlus imp = WindowManager.getCurrentImage();
            if (imp == null) {
                return command + " needs an open image (open one or select its window)";
            }
            Message request = commandRequest(command, options, imp);
            IJ.showStatus(command + ": running on " + serverUrl());
            apply(post("/imagej/command", request));
            return null;
        } catch (Exception e) {
            return describe(e);
        }
    }

    /**
     * Runs the macro function {@code Ext.name(args)} on the server with this ImageJ's session values;
     * returns its string (or sets the trailing numeric output argument and returns "").
     */
    @SuppressWarnings("unchecked")
    public static String callFunction(String name, Object[] args) throws Exception {
        List<Object> values = new ArrayList<>();
        Double[] numberOut = null;
        for (Object a : args == null ? new Object[0] : args) {
            if (a instanceof Double[]) {
                numberOut = (Double[]) a;
            } else {
                values.add(a);
            }
        }
        Message m = new Message().put("name", name).put("args", values);
        synchronized (SESSION) {
            m.put("values", new LinkedHashMap<>(SESSION));
        }
        Map<String, Object> reply = header(post("/imagej/function", m));
        if (reply.containsKey("number")) {
            if (numberOut != null && numberOut.length > 0) {
                numberOut[0] = ((Number) reply.get("number")).doubleValue();
            }
            return "";
        }
        Object value = reply.get("value");
        return value == null ? "" : value.toString();
    }

    /** The message for a failed remote call, as a macro error shows it. */
    public static String describe(Exception e) {
        if (e instanceof java.net.ConnectException) {
            return "cannot reach the ijtorch server at " + serverUrl() + " (is 'ijtorch serve' running?)";
        }
        if (e instanceof RemoteError) {
            return e.getMessage();
        }
        return e.getClass().getSimpleName() + ": " + e.getMessage();
    }

    /** An error reply of the server (its message as the text). */
    static final class RemoteError extends Exception {
        RemoteError(String message) {
            super(message);
        }
    }

    private static byte[] post(String path, Message m) throws Exception {
        HttpRequest req = request(path).header("Content-Type", MEDIA_TYPE).POST(m.publisher()).build();
        HttpResponse<byte[]> r = http().send(req, HttpResponse.BodyHandlers.ofByteArray());
        if (r.statusCode() != 200) {
            throw new RemoteError("server " + serverUrl() + " answered HTTP " + r.statusCode() + ": "
                    + errorText(new String(r.body(), StandardCharsets.UTF_8)));
        }
        return r.body();
    }

    private static String errorText(String text) {
        try {
            Object msg = ((Map<?, ?>) new Json(text).value()).get("error");
            return msg == null ? text : msg.toString();
        } catch (RuntimeException notJson) {
            return text;
        }
    }

    // ------------------------------------------------------------------ request

    /** A message of the wire format: a JSON header and arrays, sent without copying them together. */
    static final class Message {
        private final Map<String, Object> header = new LinkedHashMap<>();
        private final List<Object> specs = new ArrayList<>();
        private final List<byte[]> blobs = new ArrayList<>();

        Message put(String key, Object value) {
            header.put(key, value);
            return this;
        }

        Message array(String name, String dtype, byte[] data, long... shape) {
            Map<String, Object> spec = new LinkedHashMap<>();
            spec.put("name", name);
            spec.put("dtype", dtype);
            List<Object> dims = new ArrayList<>();
            for (long s : shape) {
                dims.add(s);
            }
            spec.put("shape", dims);
            specs.add(spec);
            blobs.add(data);
            return this;
        }

        HttpRequest.BodyPublisher publisher() {
            Map<String, Object> head = new LinkedHashMap<>(header);
            head.put("arrays", specs);
            byte[] json = Json.write(head).getBytes(StandardCharsets.UTF_8);
            List<byte[]> parts = new ArrayList<>();
            parts.add(ByteBuffer.allocate(4).order(ByteOrder.LITTLE_ENDIAN).putInt(json.length).array());
            parts.add(json);
            parts.addAll(blobs);
            long total = 0;
            for (byte[] p : parts) {
                total += p.length;
            }
            return HttpRequest.BodyPublishers.fromPublisher(HttpRequest.BodyPublishers.ofByteArrays(parts), total);
        }
    }

    /** The request for a command: the image, its file, and the ROIs and images the command reads. */
    @SuppressWarnings("unchecked")
    static Message commandRequest(String command, String options, ImagePlus imp) throws Exception {
        Message m = new Message().put("command", command).put("options", options);
        addImage(m, imp, "image", null);
        FileInfo info = imp.getOriginalFileInfo();
        boolean saved = info != null && info.directory != null && !info.directory.isEmpty() && info.fileName != null;
        m.put("image_path", saved ? new File(info.directory, info.fileName).getPath() : "");
        Map<String, Object> inputs = (Map<String, Object>) section(catalog(false), "inputs").get(command);
        if (inputs == null) {
            return m;  // not a server command: the server's reply says so
        }
        if (Boolean.TRUE.equals(inputs.get("rois"))) {  // only commands that read ROIs touch the ROI Manager
            Roi[] rois = currentRois(imp);
            if (rois.length > 0) {
                addRois(m, rois);
            }
        }
        Map<String, Object> images = new LinkedHashMap<>();
        for (Object key : (List<Object>) inputs.get("images")) {
            String title = Macro.getValue(options, key.toString(), "");
            ImagePlus other = title.isEmpty() ? null : WindowManager.getImage(title);
            if (other != null) {
                Map<String, Object> spec = new LinkedHashMap<>();
                addImage(m, other, "option_" + key, spec);
                images.put(key.toString(), spec);
            }
        }
        if (!images.isEmpty()) {
            m.put("images", images);
        }
        return m;
    }

    /** True in a headless JVM (java.awt.headless=true: Fiji's --headless, a cluster node without X). */
    static boolean headless() {
        return java.awt.GraphicsEnvironment.isHeadless();
    }

    /** The ROI Manager's ROIs; headless (no ROI Manager can exist) the image's overlay. */
    static Roi[] currentRois(ImagePlus imp) {
        if (headless()) {
            ij.gui.Overlay overlay = imp.getOverlay();
            return overlay == null ? new Roi[0] : overlay.toArray();
        }
        RoiManager rm = RoiManager.getInstance();
        return rm == null ? new Roi[0] : rm.getRoisAsArray();
    }

    /** Adds {@code imp} as array {@code name} (TZCYX[S]); its title, axes and calibration go into
     *  {@code spec}, or into the message header when {@code spec} is null. */
    static void addImage(Message m, ImagePlus imp, String name, Map<String, Object> spec) {
        int nc = imp.getNChannels(), nz = imp.getNSlices(), nt = imp.getNFrames();
        int w = imp.getWidth(), h = imp.getHeight(), depth = imp.getBitDepth();
        ImageStack stack = imp.getStack();
        boolean rgb = depth == 24;
        String dtype = depth == 8 || rgb ? "|u1" : depth == 16 ? "<u2" : "<f4";
        int bytesPerPixel = rgb ? 3 : depth / 8;
        long n = (long) w * h * bytesPerPixel * stack.getSize();
        if (n > Integer.MAX_VALUE - 8) {
            throw new IllegalArgumentException(imp.getTitle() + " is too large to send (over 2 GiB)");
        }
        ByteBuffer buf = ByteBuffer.allocate((int) n).order(ByteOrder.LITTLE_ENDIAN);
        for (int i = 1; i <= stack.getSize(); i++) {  // stack order: C fastest, then Z, then T
            Object pixels = stack.getPixels(i);
            if (pixels instanceof byte[]) {
                buf.put((byte[]) pixels);
            } else if (pixels instanceof short[]) {
                buf.asShortBuffer().put((short[]) pixels);
                buf.position(buf.position() + 2 * ((short[]) pixels).length);
            } else if (pixels instanceof float[]) {
                buf.asFloatBuffer().put((float[]) pixels);
                buf.position(buf.position() + 4 * ((float[]) pixels).length);
            } else if (pixels instanceof int[]) {
                for (int c : (int[]) pixels) {
                    buf.put((byte) (c >> 16)).put((byte) (c >> 8)).put((byte) c);
                }
            } else {
                throw new IllegalArgumentException("unsupported pixel array in plane " + i + " of " + imp.getTitle());
            }
        }
        Calibration cal = imp.getCalibration();
        Map<String, Object> c = new LinkedHashMap<>();
        c.put("pixel_width", cal.pixelWidth);
        c.put("pixel_height", cal.pixelHeight);
        c.put("voxel_depth", cal.pixelDepth);
        c.put("unit", cal.getUnit());
        c.put("frame_interval", cal.frameInterval);
        c.put("time_unit", cal.getTimeUnit());
        Map<String, Object> target = spec == null ? m.header : spec;
        if (spec != null) {
            spec.put("array", name);
        }
        target.put("title", imp.getTitle());
        target.put("axes", rgb ? "TZCYXS" : "TZCYX");
        target.put("calibration", c);
        if (rgb) {
            m.array(name, dtype, buf.array(), nt, nz, nc, h, w, 3);
        } else {
            m.array(name, dtype, buf.array(), nt, nz, nc, h, w);
        }
    }

    /** The ROI Manager's ROIs: names, types, area flags, groups, positions, float polygons of area ROIs. */
    static void addRois(Message m, Roi[] rois) {
        int n = rois.length;
        List<Object> names = new ArrayList<>(), types = new ArrayList<>(), area = new ArrayList<>(),
                groups = new ArrayList<>();
        ByteBuffer c = ints(n), z = ints(n), t = ints(n), offsets = ints(n + 1);
        List<FloatPolygon> polygons = new ArrayList<>();
        int total = 0;
        offsets.putInt(0);
        for (Roi roi : rois) {
            names.add(roi.getName());
            types.add(roi.getTypeAsString());
            area.add(roi.isArea());
            groups.add(roi.getGroup());
            c.putInt(roi.getCPosition());
            z.putInt(roi.getZPosition());
            t.putInt(roi.getTPosition());
            FloatPolygon p = roi.isArea() ? roi.getFloatPolygon() : new FloatPolygon();
            polygons.add(p);
            total += p.npoints;
            offsets.putInt(total);
        }
        ByteBuffer xs = ints(total), ys = ints(total);
        for (FloatPolygon p : polygons) {
            for (int k = 0; k < p.npoints; k++) {
                xs.putFloat(p.xpoints[k]);
                ys.putFloat(p.ypoints[k]);
            }
        }
        Map<String, Object> head = new LinkedHashMap<>();
        head.put("names", names);
        head.put("types", types);
        head.put("area", area);
        head.put("groups", groups);
        m.put("rois", head);
        m.array("roi_x", "<f4", xs.array(), total).array("roi_y", "<f4", ys.array(), total)
                .array("roi_offsets", "<i4", offsets.array(), n + 1).array("roi_c", "<i4", c.array(), n)
                .array("roi_z", "<i4", z.array(), n).array("roi_t", "<i4", t.array(), n);
    }

    private static ByteBuffer ints(int n) {
        return ByteBuffer.allocate(4 * n).order(ByteOrder.LITTLE_ENDIAN);
    }

    // ------------------------------------------------------------------ reply

    /** Values of the remote commands run in this ImageJ (what the server's macro functions may read). */
    private static final Map<String, Object> SESSION = new LinkedHashMap<>();

    @SuppressWarnings("unchecked")
    private static Map<String, Object> header(byte[] body) {
        int hlen = ByteBuffer.wrap(body).order(ByteOrder.LITTLE_ENDIAN).getInt(0);
        return (Map<String, Object>) new Json(new String(body, 4, hlen, StandardCharsets.UTF_8)).value();
    }

    @SuppressWarnings("unchecked")
    static void apply(byte[] body) throws Exception {
        int hlen = ByteBuffer.wrap(body).order(ByteOrder.LITTLE_ENDIAN).getInt(0);
        Map<String, Object> header = header(body);
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
        boolean headless = headless();
        Map<String, Object> files = (Map<String, Object>) header.get("files");
        String folder = files == null ? null : (String) files.get("folder");
        ImagePlus shown = null;
        for (Object o : (List<Object>) header.get("images")) {
            Map<String, Object> im = (Map<String, Object>) o;
            String name = (String) im.get("array");
            shown = showImage(im, arrays.get(name), shapes.get(name), lut);
        }
        Map<String, Object> rois = (Map<String, Object>) header.get("rois");
        if (rois != null) {
            List<Object> names = (List<Object>) rois.get("names");
            Roi[] polygons = IjtorchRois.polygons(floats(arrays.get("roi_x")), floats(arrays.get("roi_y")),
                    ints(arrays.get("roi_offsets")), names.toArray(new String[0]), ints(arrays.get("roi_c")),
                    ints(arrays.get("roi_z")), ints(arrays.get("roi_t")), (Boolean) rois.get("integer"));
            if (headless) {  // no ROI Manager headless: the ROIs go onto the result's overlay (and a RoiSet.zip)
                ImagePlus target = shown != null ? shown : WindowManager.getCurrentImage();
                if (target != null) {
                    ij.gui.Overlay overlay = new ij.gui.Overlay();
                    for (Roi roi : polygons) {
                        overlay.add(roi);
                    }
                    target.setOverlay(overlay);
                }
                if (folder != null && target != null) {
                    writeRoiSet(Paths.get(folder, stem(target) + "_RoiSet.zip"), polygons);
                }
            } else {
                IjtorchRois.addAll(roiManager(), polygons, (Boolean) rois.get("reset"));
            }
        }
        Map<String, Object> style = (Map<String, Object>) header.get("roi_style");
        if (style != null && !headless) {
            styleRois(style, ints(arrays.get("style_index")), arrays.get("style_rgb"));
        }
        for (Object o : (List<Object>) header.get("tables")) {
            showTable((Map<String, Object>) o, arrays, headless ? folder : null);
        }
        if (files != null) {
            writeFiles((String) files.get("folder"), (List<Object>) files.get("paths"), arrays.get("file_bytes"),
                    longs(arrays.get("file_offsets")));
        }
        Object log = header.get("log");
        if (log instanceof List) {
            for (Object line : (List<Object>) log) {
                IJ.log(String.valueOf(line));
            }
        }
        Object values = header.get("values");
        if (values instanceof Map) {
            synchronized (SESSION) {
                SESSION.putAll((Map<String, Object>) values);
            }
        }
        Object status = header.get("status");
        if (status != null && !status.toString().isEmpty()) {
            IJ.showStatus(status.toString());
        }
    }

    private static RoiManager roiManager() {
        RoiManager rm = RoiManager.getInstance();
        return rm == null ? new RoiManager() : rm;
    }

    /** ROI {@code index[k]} gets stroke colour {@code rgb[k]} and the k-th value of every property. */
    @SuppressWarnings("unchecked")
    private static void styleRois(Map<String, Object> style, int[] index, ByteBuffer rgb) {
        RoiManager rm = roiManager();
        Map<String, Object> props = (Map<String, Object>) style.get("properties");
        for (int k = 0; k < index.length; k++) {
            Roi roi = rm.getRoi(index[k]);
            roi.setStrokeColor(new Color(rgb.get(3 * k) & 0xff, rgb.get(3 * k + 1) & 0xff, rgb.get(3 * k + 2) & 0xff));
            if (props != null) {
                for (Map.Entry<String, Object> e : props.entrySet()) {
                    roi.setProperty(e.getKey(), String.valueOf(((List<Object>) e.getValue()).get(k)));
                }
            }
        }
        ImagePlus current = WindowManager.getCurrentImage();
        if (current != null) {
            current.updateAndDraw();
        }
    }

    @SuppressWarnings("unchecked")
    private static String stem(ImagePlus imp) {
        String title = imp.getTitle();
        int dot = title.lastIndexOf('.');
        return dot > 0 ? title.substring(0, dot) : title;
    }

    /** A RoiSet.zip as the ROI Manager saves one (one .roi per ROI), written atomically. */
    static void writeRoiSet(Path target, Roi[] rois) throws java.io.IOException {
        Files.createDirectories(target.toAbsolutePath().getParent());
        Path tmp = Files.createTempFile(target.toAbsolutePath().getParent(), "." + target.getFileName(), ".tmp");
        try {
            try (java.util.zip.ZipOutputStream zip = new java.util.zip.ZipOutputStream(Files.newOutputStream(tmp))) {
                java.util.Set<String> used = new java.util.HashSet<>();
                for (int i = 0; i < rois.length; i++) {
                    String name = rois[i].getName() == null ? String.format("%04d", i + 1) : rois[i].getName();
                    while (!used.add(name)) {
                        name = name + "-" + (i + 1);
                    }
                    zip.putNextEntry(new java.util.zip.ZipEntry(name + ".roi"));
                    java.io.ByteArrayOutputStream bytes = new java.io.ByteArrayOutputStream();
                    new ij.io.RoiEncoder(bytes).write(rois[i]);
                    zip.write(bytes.toByteArray());
                    zip.closeEntry();
                }
            }
            Files.move(tmp, target, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
        } finally {
            Files.deleteIfExists(tmp);
        }
    }

    /** Fills the table; shows it, or headless (no window) keeps it as ImageJ's table ("Results") and
     *  saves it as {@code <title>.csv} into {@code headlessFolder} when there is one. */
    @SuppressWarnings("unchecked")
    private static void showTable(Map<String, Object> table, Map<String, ByteBuffer> arrays, String headlessFolder)
            throws java.io.IOException {
        if (headless()) {
            ResultsTable rt = fillTable(table, arrays);
            if (headlessFolder != null) {
                Files.createDirectories(Paths.get(headlessFolder));
                rt.saveAs(Paths.get(headlessFolder, table.get("title") + ".csv").toString());
            }
            return;
        }
        fillTable(table, arrays).show((String) table.get("title"));
    }

    @SuppressWarnings("unchecked")
    private static ResultsTable fillTable(Map<String, Object> table, Map<String, ByteBuffer> arrays) {
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
        return rt;
    }

    /** Writes each file under {@code folder} atomically (a temporary file in the same folder, then a rename). */
    private static void writeFiles(String folder, List<Object> paths, ByteBuffer bytes, long[] offsets)
            throws java.io.IOException {
        Path root = Paths.get(folder).toAbsolutePath().normalize();
        for (int i = 0; i < paths.size(); i++) {
            String rel = paths.get(i).toString();
            Path target = root.resolve(rel).normalize();
            if (Paths.get(rel).isAbsolute() || !target.startsWith(root) || target.equals(root)) {
                throw new IllegalArgumentException("the server sent a file path outside " + root + ": " + rel);
            }
            byte[] data = new byte[(int) (offsets[i + 1] - offsets[i])];
            ByteBuffer from = bytes.duplicate();
            from.position((int) offsets[i]);
            from.get(data);
            Files.createDirectories(target.getParent());
            Path tmp = Files.createTempFile(target.getParent(), "." + target.getFileName(), ".tmp");
            try {
                Files.write(tmp, data);
                Files.move(tmp, target, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
            } finally {
                Files.deleteIfExists(tmp);
            }
        }
    }

    @SuppressWarnings("unchecked")
    private static ImagePlus showImage(Map<String, Object> im, ByteBuffer b, List<Object> shape, LUT lut) {
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
        if (nc > 1) {  // as IJ.createHyperStack (and ijtorch's numpy_to_imageplus): composite up to MAX_CHANNELS
            imp = new CompositeImage(imp, nc <= CompositeImage.MAX_CHANNELS ? IJ.COMPOSITE : IJ.COLOR);
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
        if (headless() && !ij.macro.Interpreter.isBatchMode() && IJ.getInstance() == null) {
            WindowManager.setTempCurrentImage(imp);  // no window headless: the current (non-displayed) image
            ij.macro.Interpreter.addBatchModeImage(imp);
        } else {
            imp.show();
        }
        return imp;
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

    private static long[] longs(ByteBuffer b) {
        long[] out = new long[b.capacity() / 8];
        b.asLongBuffer().get(out);
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

        /** JSON text of maps, lists, strings, numbers, booleans and null (anything else as its string). */
        static String write(Object value) {
            StringBuilder b = new StringBuilder();
            write(b, value);
            return b.toString();
        }

        private static void write(StringBuilder b, Object v) {
            if (v == null) {
                b.append("null");
            } else if (v instanceof Boolean) {
                b.append(v.toString());
            } else if (v instanceof Double || v instanceof Float) {
                b.append(number(((Number) v).doubleValue()));
            } else if (v instanceof Number) {
                b.append(((Number) v).longValue());
            } else if (v instanceof Map) {
                b.append('{');
                boolean first = true;
                for (Map.Entry<?, ?> e : ((Map<?, ?>) v).entrySet()) {
                    b.append(first ? "" : ",").append(quote(String.valueOf(e.getKey()))).append(':');
                    write(b, e.getValue());
                    first = false;
                }
                b.append('}');
            } else if (v instanceof List) {
                b.append('[');
                boolean first = true;
                for (Object item : (List<?>) v) {
                    b.append(first ? "" : ",");
                    write(b, item);
                    first = false;
                }
                b.append(']');
            } else {
                b.append(quote(v.toString()));
            }
        }
    }
}
