package ijtorch;

import ij.IJ;
import ij.ImagePlus;
import ij.Macro;
import ij.Prefs;
import ij.WindowManager;
import ij.gui.PolygonRoi;
import ij.gui.Roi;
import ij.io.FileInfo;
import ij.io.RoiDecoder;
import ij.io.RoiEncoder;
import ij.measure.Calibration;
import ij.measure.ResultsTable;
import ij.plugin.frame.RoiManager;

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.File;
import java.io.StringReader;
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
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.zip.ZipEntry;
import java.util.zip.ZipInputStream;
import java.util.zip.ZipOutputStream;

/**
 * Runs ijtorch commands and {@code Ext.ijtorch...} macro functions on an ijtorch server ("ijtorch
 * serve") when no Python handler is registered in this ImageJ: transport only, in ImageJ's own files.
 *
 * <p>The server is {@code Prefs "ijtorch.server"}, the system property {@code ijtorch.server},
 * {@code IJTORCH_SERVER} or {@code server.url} in {@code Fiji.app/ijtorch.properties} (written by
 * {@code ijtorch install-fiji}); a token comes from {@code ijtorch.token}, {@code IJTORCH_TOKEN} or
 * {@code server.token}. A request is a ZIP (in the server's message envelope, see
 * {@code ijtorch/serve/_imagej.py}) of {@code request.properties} (command, options, titles, exact
 * calibrations), the current image as a TIFF ({@code FileSaver.serialize}), the open images that
 * options name, and the ROI Manager's ROIs as a RoiSet ({@code RoiEncoder}) for commands that read
 * them. The reply is a ZIP of TIFFs (opened with {@code Opener}), a RoiSet ({@code RoiDecoder}),
 * CSV tables ({@code ResultsTable.open}), files to write and {@code reply.properties} (status, log
 * lines, session values, titles, ROI colours).
 */
public final class IjtorchRemote {

    private static HttpClient client;
    private static Properties catalog;
    private static String catalogUrl;
    /** Values of the remote commands run in this ImageJ (JSON texts the server's macro functions read). */
    private static final Map<String, String> SESSION = new LinkedHashMap<>();

    private IjtorchRemote() {
    }

    /** The configured server URL without a trailing slash, or null. */
    public static String serverUrl() {
        String url = first(Prefs.get("ijtorch.server", ""), System.getProperty("ijtorch.server"),
                System.getenv("IJTORCH_SERVER"), installedProperty("server.url"));
        return url == null ? null : url.trim().replaceAll("/+$", "");
    }

    private static String first(String... values) {
        for (String v : values) {
            if (v != null && !v.trim().isEmpty()) {
                return v;
            }
        }
        return null;
    }

    /** A key of Fiji.app/ijtorch.properties (written by "ijtorch install-fiji"), or null. */
    static String installedProperty(String key) {
        File file = installedProperties();
        try {
            return file == null ? null : properties(Files.readAllBytes(file.toPath())).getProperty(key);
        } catch (java.io.IOException e) {
            return null;
        }
    }

    /**
     * Fiji.app/ijtorch.properties, found without depending on the working directory: next to the
     * folder holding this shim's jar (plugins/ or jars/), then the launcher's directory properties,
     * then ImageJ's own folder; null when none has it.
     */
    static File installedProperties() {
        List<File> dirs = new ArrayList<>();
        try {
            File jar = new File(IjtorchRemote.class.getProtectionDomain().getCodeSource().getLocation().toURI());
            for (File d = jar.getParentFile(); d != null && dirs.size() < 3; d = d.getParentFile()) {
                dirs.add(d);
            }
        } catch (Exception ignored) {
            // no code source (classes defined by ijtorch.attach): the properties below
        }
        for (String d : new String[] {System.getProperty("imagej.dir"), System.getProperty("fiji.dir"),
                System.getProperty("ij.dir"), System.getProperty("plugins.dir"), IJ.getDirectory("imagej")}) {
            if (d != null && !d.isEmpty()) {
                dirs.add(new File(d));
            }
        }
        for (File d : dirs) {
            if (new File(d, "ijtorch.properties").isFile()) {
                return new File(d, "ijtorch.properties");
            }
        }
        return null;
    }

    public static boolean configured() {
        return serverUrl() != null;
    }

    private static synchronized HttpClient http() {
        if (client == null) {  // HTTP/1.1: HTTP/2 makes every request try an h2c upgrade the server logs
            client = HttpClient.newBuilder().version(HttpClient.Version.HTTP_1_1)
                    .connectTimeout(Duration.ofSeconds(10)).build();
        }
        return client;
    }

    /** GET (body null) or POST {@code body} as a ZIP in the server's envelope; the reply's bytes. */
    private static byte[] send(String path, byte[] body, String accept) throws Exception {
        HttpRequest.Builder b = HttpRequest.newBuilder(URI.create(serverUrl() + path)).timeout(Duration.ofHours(2));
        String token = first(System.getProperty("ijtorch.token"), System.getenv("IJTORCH_TOKEN"),
                installedProperty("server.token"));
        if (token != null) {
            b.header("Authorization", "Bearer " + token);
        }
        if (body != null) {  // [uint32 LE header length][JSON header][the ZIP as one uint8 array]
            byte[] head = ("{\"format\":\"zip\",\"arrays\":[{\"name\":\"zip\",\"dtype\":\"|u1\",\"shape\":["
                    + body.length + "]}]}").getBytes(StandardCharsets.UTF_8);
            byte[] size = ByteBuffer.allocate(4).order(ByteOrder.LITTLE_ENDIAN).putInt(head.length).array();
            b.header("Content-Type", "application/x-ijtorch").POST(HttpRequest.BodyPublishers.fromPublisher(
                    HttpRequest.BodyPublishers.ofByteArrays(List.of(size, head, body)), 4L + head.length + body.length));
        }
        HttpResponse<byte[]> r = http().send(b.header("Accept", accept).build(), HttpResponse.BodyHandlers.ofByteArray());
        if (r.statusCode() != 200) {  // errors are {"error": "...", ...}
            String text = new String(r.body(), StandardCharsets.UTF_8);
            Matcher m = Pattern.compile("\"error\"\\s*:\\s*\"((?:[^\"\\\\]|\\\\.)*)\"").matcher(text);
            if (m.find()) {  // JSON string escapes are Properties escapes (but \b)
                text = properties(("e=" + m.group(1)).getBytes(StandardCharsets.UTF_8)).getProperty("e");
            }
            throw new RemoteError("server " + serverUrl() + " answered HTTP " + r.statusCode() + ": " + text);
        }
        return r.body();
    }

    private static Properties properties(byte[] text) throws java.io.IOException {
        Properties p = new Properties();
        p.load(new StringReader(new String(text, StandardCharsets.UTF_8)));
        return p;
    }

    /** What the server runs ({@code GET /imagej/commands}, Properties text), kept per URL until {@code refresh}. */
    private static synchronized Properties catalog(boolean refresh) throws Exception {
        if (refresh || catalog == null || !serverUrl().equals(catalogUrl)) {
            catalog = properties(send("/imagej/commands", null, "text/plain"));
            catalogUrl = serverUrl();
        }
        return catalog;
    }

    /** Dialog spec of a remote command (as IjtorchRegistry.dialogSpec), or null if unknown. */
    public static String dialogSpec(String command) throws Exception {
        return catalog(false).getProperty("command." + command);
    }

    /** Puts the server's commands into ImageJ's command table and its macro functions into the
     *  registry (for an ImageJ without Python); returns the number of commands. */
    public static int install() throws Exception {
        int n = 0;
        for (String key : catalog(true).stringPropertyNames()) {
            if (key.startsWith("command.")) {
                String name = key.substring("command.".length());
                IjtorchRegistry.installMenuCommand(name, "ijtorch.IjtorchCommand(\"" + name + "\")");
                n++;
            } else if (key.startsWith("function.")) {
                String codes = catalog.getProperty(key);
                int[] types = codes.isEmpty() ? new int[0]
                        : java.util.Arrays.stream(codes.split(",")).mapToInt(Integer::parseInt).toArray();
                IjtorchRegistry.registerFunction(key.substring("function.".length()), types);
            }
        }
        return n;
    }

    /** Runs {@code command} with {@code options} on the server; returns null or an error message. */
    public static String runCommand(String command, String options) {
        try {
            ImagePlus imp = WindowManager.getCurrentImage();
            if (imp == null) {
                return command + " needs an open image (open one or select its window)";
            }
            Properties p = new Properties();
            p.setProperty("command", command);
            p.setProperty("options", options);
            FileInfo info = imp.getOriginalFileInfo();
            boolean saved = info != null && info.directory != null && !info.directory.isEmpty() && info.fileName != null;
            p.setProperty("image_path", saved ? new File(info.directory, info.fileName).getPath() : "");
            p.setProperty("image.position", imp.getC() + "," + imp.getZ() + "," + imp.getT());
            Map<String, byte[]> files = new LinkedHashMap<>();
            addImage(p, files, "image", imp);
            if ("true".equals(catalog(false).getProperty("rois." + command))) {  // only then touch the ROI Manager
                Roi[] rois = headless() ? (imp.getOverlay() == null ? new Roi[0] : imp.getOverlay().toArray())
                        : RoiManager.getInstance() == null ? new Roi[0] : RoiManager.getInstance().getRoisAsArray();
                if (rois.length > 0) {
                    files.put("rois.zip", roiSet(p, rois));
                }
            }
            for (String key : catalog.getProperty("images." + command, "").split(",")) {
                ImagePlus other = key.isEmpty() ? null : WindowManager.getImage(Macro.getValue(options, key, ""));
                if (other != null) {
                    addImage(p, files, "option." + key, other);
                }
            }
            IJ.showStatus(command + ": running on " + serverUrl());
            apply(unzip(send("/imagej/command", zip(p, files), "application/zip")));
            return null;
        } catch (Exception e) {
            return describe(e);
        }
    }

    /** Runs {@code Ext.name(args)} on the server with this ImageJ's session values; returns its
     *  string (or sets the trailing numeric output argument and returns ""). */
    public static String callFunction(String name, Object[] args) throws Exception {
        Properties p = new Properties();
        p.setProperty("function", name);
        Double[] numberOut = null;
        int i = 0;
        for (Object a : args == null ? new Object[0] : args) {
            if (a instanceof Double[]) {
                numberOut = (Double[]) a;
            } else {
                p.setProperty((a instanceof Double ? "number." : "arg.") + i++, String.valueOf(a));
            }
        }
        synchronized (SESSION) {
            SESSION.forEach((k, v) -> p.setProperty("value." + k, v));
        }
        Properties reply = properties(unzip(send("/imagej/function", zip(p, Map.of()), "application/zip"))
                .get("reply.properties"));
        if (reply.getProperty("number") != null) {
            if (numberOut != null && numberOut.length > 0) {
                numberOut[0] = Double.parseDouble(reply.getProperty("number"));
            }
            return "";
        }
        return reply.getProperty("value", "");
    }

    /** The message for a failed remote call, as a macro error shows it. */
    public static String describe(Exception e) {
        if (e instanceof java.net.ConnectException) {
            return "cannot reach the ijtorch server at " + serverUrl() + " (is 'ijtorch serve' running?)";
        }
        return e instanceof RemoteError ? e.getMessage() : e.getClass().getSimpleName() + ": " + e.getMessage();
    }

    /** An error reply of the server (its message as the text). */
    static final class RemoteError extends Exception {
        RemoteError(String message) {
            super(message);
        }
    }

    /** True in a headless JVM (java.awt.headless=true: Fiji's --headless, a cluster node without X). */
    static boolean headless() {
        return java.awt.GraphicsEnvironment.isHeadless();
    }

    // ------------------------------------------------------------------ ImageJ files

    /** {@code imp} as {@code <prefix>.tif}; its title and exact calibration as {@code <prefix>.*} keys. */
    private static void addImage(Properties p, Map<String, byte[]> files, String prefix, ImagePlus imp) {
        byte[] tiff = new ij.io.FileSaver(imp).serialize();
        files.put(prefix + ".tif", tiff != null ? tiff : new ij.io.FileSaver(imp.duplicate()).serialize());  // virtual
        Calibration c = imp.getCalibration();
        Object[] values = {imp.getTitle(), c.pixelWidth, c.pixelHeight, c.pixelDepth, c.getUnit(), c.frameInterval,
                           c.getTimeUnit()};
        for (int i = 0; i < values.length; i++) {
            p.setProperty(prefix + "." + CAL[i], String.valueOf(values[i]));
        }
    }

    private static final String[] CAL = {"title", "pixel_width", "pixel_height", "voxel_depth", "unit",
                                         "frame_interval", "time_unit"};

    /** The ROIs as a RoiSet: area ROIs as polygons of their float polygon (what commands read). */
    private static byte[] roiSet(Properties p, Roi[] rois) throws java.io.IOException {
        Map<String, byte[]> entries = new LinkedHashMap<>();
        for (int i = 0; i < rois.length; i++) {
            Roi roi = rois[i];
            p.setProperty("roi." + i + ".type", roi.getTypeAsString());
            p.setProperty("roi." + i + ".area", String.valueOf(roi.isArea()));
            if (roi.getGroup() > 0 && Roi.getGroupName(roi.getGroup()) != null) {
                p.setProperty("group." + roi.getGroup(), Roi.getGroupName(roi.getGroup()));
            }
            if (roi.isArea()) {
                Roi polygon = new PolygonRoi(roi.getFloatPolygon(), Roi.POLYGON);
                polygon.setName(roi.getName());
                polygon.setGroup(roi.getGroup());
                polygon.setPosition(roi.getCPosition(), roi.getZPosition(), roi.getTPosition());
                roi = polygon;
            }
            entries.put(String.format("%05d.roi", i), RoiEncoder.saveAsByteArray(roi));
        }
        return zip(null, entries);
    }

    private static byte[] zip(Properties p, Map<String, byte[]> files) throws java.io.IOException {
        ByteArrayOutputStream bytes = new ByteArrayOutputStream();
        try (ZipOutputStream zip = new ZipOutputStream(bytes)) {
            if (p != null) {
                zip.putNextEntry(new ZipEntry("request.properties"));
                p.store(zip, null);
            }
            for (Map.Entry<String, byte[]> e : files.entrySet()) {
                zip.putNextEntry(new ZipEntry(e.getKey()));
                zip.write(e.getValue());
            }
        }
        return bytes.toByteArray();
    }

    private static Map<String, byte[]> unzip(byte[] data) throws java.io.IOException {
        Map<String, byte[]> files = new LinkedHashMap<>();
        try (ZipInputStream zip = new ZipInputStream(new ByteArrayInputStream(data))) {
            for (ZipEntry e = zip.getNextEntry(); e != null; e = zip.getNextEntry()) {
                files.put(e.getName(), zip.readAllBytes());
            }
        }
        return files;
    }

    /** Applies a reply as ijtorch's in-process commands do (bridge/apply.py apply_outputs). */
    static void apply(Map<String, byte[]> z) throws Exception {
        Properties p = properties(z.get("reply.properties"));
        String folder = p.getProperty("files.folder");
        ImagePlus shown = null;
        for (int k = 0; z.containsKey("image" + k + ".tif"); k++) {
            shown = new ij.io.Opener().deserialize(z.get("image" + k + ".tif"));
            shown.setTitle(p.getProperty("image" + k + ".title"));
            Calibration c = shown.getCalibration();
            c.pixelWidth = Double.parseDouble(p.getProperty("image" + k + ".pixel_width"));
            c.pixelHeight = Double.parseDouble(p.getProperty("image" + k + ".pixel_height"));
            c.pixelDepth = Double.parseDouble(p.getProperty("image" + k + ".voxel_depth"));
            c.setUnit(p.getProperty("image" + k + ".unit"));
            c.frameInterval = Double.parseDouble(p.getProperty("image" + k + ".frame_interval"));
            c.setTimeUnit(p.getProperty("image" + k + ".time_unit"));
            if (headless() && IJ.getInstance() == null) {  // no window: the current (non-displayed) image
                WindowManager.setTempCurrentImage(shown);
                if (!ij.macro.Interpreter.isBatchMode()) {
                    ij.macro.Interpreter.addBatchModeImage(shown);
                }
            } else {
                shown.show();
            }
        }
        if (z.containsKey("rois.zip")) {
            List<Roi> rois = new ArrayList<>();
            for (byte[] roi : unzip(z.get("rois.zip")).values()) {
                rois.add(RoiDecoder.openFromByteArray(roi));
            }
            ImagePlus target = shown != null ? shown : WindowManager.getCurrentImage();
            if (headless()) {  // no ROI Manager: the result's overlay and <title>_RoiSet.zip
                if (target != null) {
                    target.setOverlay(new ij.gui.Overlay());
                    rois.forEach(target.getOverlay()::add);
                }
                if (folder != null) {
                    String stem = target == null ? "rois" : target.getTitle().replaceFirst("(.)\\.[^.]*$", "$1");
                    write(Paths.get(folder, stem + "_RoiSet.zip"), z.get("rois.zip"));
                }
            } else {
                RoiManager rm = RoiManager.getInstance() == null ? new RoiManager() : RoiManager.getInstance();
                IjtorchRois.addAll(rm, rois.toArray(new Roi[0]), "true".equals(p.getProperty("rois.reset")));
            }
        }
        for (String key : p.stringPropertyNames()) {  // style.<index>=#rrggbb, style.<index>.<property>=value
            String[] f = key.split("\\.", 3);
            if (f[0].equals("style") && !headless()) {
                Roi roi = RoiManager.getInstance().getRoi(Integer.parseInt(f[1]));
                if (f.length == 2) {
                    roi.setStrokeColor(ij.plugin.Colors.decode(p.getProperty(key), null));
                } else {
                    roi.setProperty(f[2], p.getProperty(key));
                }
            }
        }
        if (!headless() && WindowManager.getCurrentImage() != null) {
            WindowManager.getCurrentImage().updateAndDraw();
        }
        for (int k = 0; z.containsKey("table" + k + ".csv"); k++) {
            Path csv = Files.createTempFile("ijtorch-table", ".csv");
            ResultsTable rt;
            try {
                rt = ResultsTable.open(Files.write(csv, z.get("table" + k + ".csv")).toString());
            } finally {
                Files.deleteIfExists(csv);
            }
            String title = p.getProperty("table" + k + ".title");
            if ("Results".equals(title)) {
                ij.plugin.filter.Analyzer.setResultsTable(rt);
            }
            if (!headless()) {
                rt.show(title);
            } else if (folder != null) {
                Files.createDirectories(Paths.get(folder));
                rt.saveAs(Paths.get(folder, title + ".csv").toString());
            }
        }
        Path root = folder == null ? null : Paths.get(folder).toAbsolutePath().normalize();
        for (Map.Entry<String, byte[]> e : z.entrySet()) {
            if (e.getKey().startsWith("files/")) {
                Path target = root.resolve(e.getKey().substring("files/".length())).normalize();
                if (!target.startsWith(root) || target.equals(root)) {
                    throw new IllegalArgumentException("the server sent a file path outside " + root + ": " + e.getKey());
                }
                write(target, e.getValue());
            }
        }
        for (int i = 0; p.getProperty("log." + i) != null; i++) {
            IJ.log(p.getProperty("log." + i));
        }
        synchronized (SESSION) {
            p.stringPropertyNames().stream().filter(k -> k.startsWith("value."))
                    .forEach(k -> SESSION.put(k.substring("value.".length()), p.getProperty(k)));
        }
        if (!p.getProperty("status", "").isEmpty()) {
            IJ.showStatus(p.getProperty("status"));
        }
    }

    /** Writes {@code data} atomically (a temporary file in the same folder, then a rename). */
    private static void write(Path target, byte[] data) throws java.io.IOException {
        Files.createDirectories(target.toAbsolutePath().getParent());
        Path tmp = Files.createTempFile(target.toAbsolutePath().getParent(), "." + target.getFileName(), ".tmp");
        try {
            Files.move(Files.write(tmp, data), target, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
        } finally {
            Files.deleteIfExists(tmp);
        }
    }
}
