package ijtorch;

import ij.*;
import ij.gui.*;
import ij.io.*;
import ij.measure.*;
import ij.plugin.frame.RoiManager;
import java.io.*;
import java.net.URI;
import java.net.http.*;
import java.nio.*;
import java.nio.file.*;
import java.time.Duration;
import java.util.*;
import java.util.regex.*;
import java.util.zip.*;

import static java.nio.charset.StandardCharsets.UTF_8;

/**
 * Runs ijtorch commands and {@code Ext.ijtorch...} functions on the server ({@link IjtorchServer}) when no Python
 * handler is registered here. Requests and replies are ZIPs of ImageJ's own files ({@code ijtorch/serve/_imagej.py}):
 * TIFFs ({@code FileSaver}/{@code Opener}), RoiSets ({@code RoiEncoder}/{@code RoiDecoder}), CSV tables ({@code
 * ResultsTable.open}), files to write, and a Properties text.
 */
public final class IjtorchRemote {

    private static final HttpClient CLIENT = HttpClient.newBuilder()  // HTTP/2 would try an h2c upgrade per request
            .version(HttpClient.Version.HTTP_1_1).connectTimeout(Duration.ofSeconds(10)).build();
    private static Properties catalog;
    private static String catalogUrl;
    /** Values of the remote commands run in this ImageJ (JSON texts the server's macro functions read). */
    private static final Map<String, String> SESSION = Collections.synchronizedMap(new LinkedHashMap<>());
    private static final String[] CAL = {"title", "pixel_width", "pixel_height", "voxel_depth", "unit",
                                         "frame_interval", "time_unit"};

    private IjtorchRemote() {
    }

    /** GET (body null) or POST {@code body} (a ZIP) in the server's envelope; the reply's bytes. */
    private static byte[] send(String path, byte[] body, String accept) throws Exception {
        HttpRequest.Builder b = HttpRequest.newBuilder(URI.create(IjtorchServer.url() + path)).timeout(Duration.ofHours(2));
        if (IjtorchServer.token() != null) {
            b.header("Authorization", "Bearer " + IjtorchServer.token());
        }
        if (body != null) {  // [uint32 LE header length][JSON header][the ZIP as one uint8 array]
            byte[] head = ("{\"format\":\"zip\",\"arrays\":[{\"name\":\"zip\",\"dtype\":\"|u1\",\"shape\":["
                    + body.length + "]}]}").getBytes(UTF_8);
            byte[] size = ByteBuffer.allocate(4).order(ByteOrder.LITTLE_ENDIAN).putInt(head.length).array();
            b.header("Content-Type", "application/x-ijtorch").POST(HttpRequest.BodyPublishers.fromPublisher(
                    HttpRequest.BodyPublishers.ofByteArrays(List.of(size, head, body)), 4L + head.length + body.length));
        }
        HttpResponse<byte[]> r = CLIENT.send(b.header("Accept", accept).build(), HttpResponse.BodyHandlers.ofByteArray());
        if (r.statusCode() != 200) {  // errors are {"error": "...", ...}; JSON string escapes are Properties escapes
            String text = new String(r.body(), UTF_8);
            Matcher m = Pattern.compile("\"error\"\\s*:\\s*\"((?:[^\"\\\\]|\\\\.)*)\"").matcher(text);
            text = m.find() ? IjtorchServer.properties(("e=" + m.group(1)).getBytes(UTF_8)).getProperty("e") : text;
            throw new RemoteError("server " + IjtorchServer.url() + " answered HTTP " + r.statusCode() + ": " + text);
        }
        return r.body();
    }

    /** What the server runs ({@code GET /imagej/commands} as Properties: {@code command.<name>} is a dialog
     *  spec as IjtorchRegistry.dialogSpec), kept per URL until {@code refresh}. */
    static synchronized Properties catalog(boolean refresh) throws Exception {
        if (refresh || catalog == null || !IjtorchServer.url().equals(catalogUrl)) {
            catalog = IjtorchServer.properties(send("/imagej/commands", null, "text/plain"));
            catalogUrl = IjtorchServer.url();
        }
        return catalog;
    }

    /** Puts the server's commands into ImageJ's command table and its macro functions into the
     *  registry (for an ImageJ without Python). */
    public static void install() throws Exception {
        for (String key : catalog(true).stringPropertyNames()) {
            String name = key.substring(key.indexOf('.') + 1), codes = catalog.getProperty(key);
            if (key.startsWith("command.")) {
                IjtorchRegistry.installMenuCommand(name, "ijtorch.IjtorchCommand(\"" + name + "\")");
            } else if (key.startsWith("function.")) {
                IjtorchRegistry.registerFunction(name, codes.isEmpty() ? new int[0]
                        : Arrays.stream(codes.split(",")).mapToInt(Integer::parseInt).toArray());
            }
        }
    }

    /** Runs {@code command} with {@code options} on the server; returns null or an error message. The
     *  request: the current image (IjtorchCommand checked there is one), the open images that options name
     *  and, for commands that read them, the ROI Manager's ROIs (headless, the overlay's). */
    public static String runCommand(String command, String options) {
        ImagePlus imp = WindowManager.getCurrentImage();
        boolean headless = java.awt.GraphicsEnvironment.isHeadless();  // Fiji's --headless, a node without X
        try {
            Properties p = new Properties();
            FileInfo info = imp.getOriginalFileInfo();
            boolean saved = info != null && info.directory != null && !info.directory.isEmpty() && info.fileName != null;
            p.setProperty("image_path", saved ? new File(info.directory, info.fileName).getPath() : "");
            p.setProperty("image.position", imp.getC() + "," + imp.getZ() + "," + imp.getT());
            p.setProperty("headless", String.valueOf(headless));
            p.setProperty("command", command);
            p.setProperty("options", options);
            Map<String, byte[]> files = new LinkedHashMap<>();
            addImage(p, files, "image", imp);
            if ("true".equals(catalog(false).getProperty("rois." + command))) {  // only then touch the ROI Manager
                Object rois = headless ? imp.getOverlay() : RoiManager.getInstance();
                files.put("rois.zip", roiSet(p, rois instanceof Overlay ? ((Overlay) rois).toArray()
                        : rois != null ? ((RoiManager) rois).getRoisAsArray() : new Roi[0]));
            }
            for (String key : catalog.getProperty("images." + command, "").split(",")) {
                ImagePlus other = key.isEmpty() ? null : WindowManager.getImage(Macro.getValue(options, key, ""));
                if (other != null) {
                    addImage(p, files, "option." + key, other);
                }
            }
            IJ.showStatus(command + ": running on " + IjtorchServer.url());
            apply(unzip(send("/imagej/command", zip(p, files), "application/zip")));
            return null;
        } catch (Exception e) {
            return IjtorchServer.describe(e);
        }
    }

    /** Runs {@code Ext.name(args)} on the server with this ImageJ's session values; returns its
     *  string (or sets the trailing numeric output argument and returns ""). */
    public static String callFunction(String name, Object[] args) throws Exception {
        Properties p = new Properties();
        p.setProperty("function", name);
        for (int i = 0; args != null && i < args.length; i++) {
            if (!(args[i] instanceof Double[])) {
                p.setProperty((args[i] instanceof Double ? "number." : "arg.") + i, String.valueOf(args[i]));
            }
        }
        SESSION.forEach((k, v) -> p.setProperty("value." + k, v));
        Properties reply = IjtorchServer.properties(unzip(send("/imagej/function", zip(p, Map.of()), "application/zip"))
                .get("reply.properties"));
        Object out = args == null || args.length == 0 ? null : args[args.length - 1];
        if (reply.getProperty("number") != null && out instanceof Double[] && ((Double[]) out).length > 0) {
            ((Double[]) out)[0] = Double.parseDouble(reply.getProperty("number"));
        }
        return reply.getProperty("value", "");
    }

    /** An error reply of the server (its message as the text). */
    static final class RemoteError extends Exception {
        RemoteError(String message) { super(message); }
    }

    /** {@code imp} as {@code <prefix>.tif}; its title and exact calibration as {@code <prefix>.*} keys. */
    private static void addImage(Properties p, Map<String, byte[]> files, String prefix, ImagePlus imp) {
        byte[] tiff = new FileSaver(imp).serialize();  // null for a virtual stack
        files.put(prefix + ".tif", tiff != null ? tiff : new FileSaver(imp.duplicate()).serialize());
        Calibration c = imp.getCalibration();
        Object[] values = {imp.getTitle(), c.pixelWidth, c.pixelHeight, c.pixelDepth, c.getUnit(), c.frameInterval,
                           c.getTimeUnit()};
        for (int i = 0; i < values.length; i++) {
            p.setProperty(prefix + "." + CAL[i], String.valueOf(values[i]));
        }
    }

    /** The ROIs as a RoiSet, area ROIs as polygons of their float polygon (what commands read). */
    private static byte[] roiSet(Properties p, Roi[] rois) throws IOException {
        Map<String, byte[]> entries = new LinkedHashMap<>();
        for (int i = 0; i < rois.length; i++) {
            Roi roi = rois[i], sent = roi.isArea() ? new PolygonRoi(roi.getFloatPolygon(), Roi.POLYGON) : roi;
            p.setProperty("roi." + i + ".type", roi.getTypeAsString());
            p.setProperty("roi." + i + ".area", String.valueOf(roi.isArea()));
            if (roi.getGroup() > 0 && Roi.getGroupName(roi.getGroup()) != null) {
                p.setProperty("group." + roi.getGroup(), Roi.getGroupName(roi.getGroup()));
            }
            if (sent != roi) {
                sent.setName(roi.getName());
                sent.setGroup(roi.getGroup());
                sent.setPosition(roi.getCPosition(), roi.getZPosition(), roi.getTPosition());
            }
            entries.put(String.format("%05d.roi", i), RoiEncoder.saveAsByteArray(sent));
        }
        return zip(null, entries);
    }

    /** An uncompressed ZIP of {@code files} and, unless null, {@code p} as request.properties. */
    private static byte[] zip(Properties p, Map<String, byte[]> files) throws IOException {
        ByteArrayOutputStream bytes = new ByteArrayOutputStream();
        try (ZipOutputStream zip = new ZipOutputStream(bytes)) {
            zip.setLevel(Deflater.NO_COMPRESSION);  // the server refuses ZIPs that expand much
            for (Map.Entry<String, byte[]> e : files.entrySet()) {
                zip.putNextEntry(new ZipEntry(e.getKey()));
                zip.write(e.getValue());
            }
            if (p != null) {
                zip.putNextEntry(new ZipEntry("request.properties"));
                p.store(zip, null);
            }
        }
        return bytes.toByteArray();
    }

    private static Map<String, byte[]> unzip(byte[] data) throws IOException {
        Map<String, byte[]> files = new LinkedHashMap<>();
        try (ZipInputStream zip = new ZipInputStream(new ByteArrayInputStream(data))) {
            for (ZipEntry e = zip.getNextEntry(); e != null; e = zip.getNextEntry()) {
                files.put(e.getName(), zip.readAllBytes());
            }
        }
        return files;
    }

    /** Applies a reply as ijtorch's in-process commands do (bridge/apply.py apply_outputs); headless (no
     *  window can exist) images stay current and undisplayed, ROIs go onto the overlay, tables are saved
     *  into the command's folder as {@code <table>.csv}. */
    static void apply(Map<String, byte[]> z) throws Exception {
        Properties p = IjtorchServer.properties(z.get("reply.properties"));
        String folder = p.getProperty("files.folder");
        boolean headless = java.awt.GraphicsEnvironment.isHeadless();
        ImagePlus shown = WindowManager.getCurrentImage();
        for (int k = 0; z.containsKey("image" + k + ".tif"); k++) {
            String at = "image" + k + ".";
            shown = new Opener().deserialize(z.get(at + "tif"));
            shown.setTitle(p.getProperty(at + "title"));
            Calibration c = shown.getCalibration();  // exact (TIFF resolution rationals are not)
            c.pixelWidth = Double.parseDouble(p.getProperty(at + "pixel_width"));
            c.pixelHeight = Double.parseDouble(p.getProperty(at + "pixel_height"));
            c.pixelDepth = Double.parseDouble(p.getProperty(at + "voxel_depth"));
            c.frameInterval = Double.parseDouble(p.getProperty(at + "frame_interval"));
            c.setUnit(p.getProperty(at + "unit"));
            c.setTimeUnit(p.getProperty(at + "time_unit"));
            if (headless && IJ.getInstance() == null) {
                WindowManager.setTempCurrentImage(shown);
            } else {
                shown.show();
            }
        }
        if (z.containsKey("rois.zip")) {
            Roi[] rois = unzip(z.get("rois.zip")).values().stream().map(RoiDecoder::openFromByteArray).toArray(Roi[]::new);
            if (headless && shown != null) {
                shown.setOverlay(new Overlay());
                Arrays.stream(rois).forEach(shown.getOverlay()::add);
            } else if (!headless) {
                RoiManager rm = RoiManager.getInstance() == null ? new RoiManager() : RoiManager.getInstance();
                IjtorchRois.addAll(rm, rois, "true".equals(p.getProperty("rois.reset")));
            }
        }
        for (String key : p.stringPropertyNames()) {  // style.<index>=#rrggbb, style.<index>.<property>=value
            String[] f = key.split("\\.", 3);
            Roi roi = f[0].equals("style") ? RoiManager.getInstance().getRoi(Integer.parseInt(f[1])) : null;
            if (roi != null && f.length == 2) {
                roi.setStrokeColor(ij.plugin.Colors.decode(p.getProperty(key), null));
            } else if (roi != null) {
                roi.setProperty(f[2], p.getProperty(key));
            }
        }
        if (!headless && WindowManager.getCurrentImage() != null) {
            WindowManager.getCurrentImage().updateAndDraw();
        }
        for (int k = 0; z.containsKey("table" + k + ".csv"); k++) {
            Path csv = Files.write(Files.createTempFile("ijtorch-table", ".csv"), z.get("table" + k + ".csv"));
            ResultsTable rt;
            try {
                rt = ResultsTable.open(csv.toString());
            } finally {
                Files.deleteIfExists(csv);
            }
            String title = p.getProperty("table" + k + ".title");
            if ("Results".equals(title)) {  // ImageJ's system table, as in-process
                ij.plugin.filter.Analyzer.setResultsTable(rt);
            }
            if (!headless) {
                rt.show(title);
            } else if (folder != null) {
                rt.saveAs(Files.createDirectories(Paths.get(folder)).resolve(title + ".csv").toString());
            }
        }
        for (Map.Entry<String, byte[]> e : z.entrySet()) {  // files/<path>: written under folder
            Path root = folder == null ? null : Paths.get(folder).toAbsolutePath().normalize();
            Path file = e.getKey().startsWith("files/") ? root.resolve(e.getKey().substring(6)).normalize() : null;
            if (file != null && (!file.startsWith(root) || file.equals(root))) {
                throw new IllegalArgumentException("the server sent a file path outside " + root + ": " + e.getKey());
            } else if (file != null) {
                write(file, e.getValue());
            }
        }
        for (int i = 0; p.getProperty("log." + i) != null; i++) {
            IJ.log(p.getProperty("log." + i));
        }
        p.stringPropertyNames().stream().filter(k -> k.startsWith("value."))
                .forEach(k -> SESSION.put(k.substring("value.".length()), p.getProperty(k)));
        IJ.showStatus(p.getProperty("status", ""));
    }

    /** Writes {@code data} atomically (a temporary file in the same folder, then a rename). */
    private static void write(Path target, byte[] data) throws IOException {
        Path tmp = Files.createTempFile(Files.createDirectories(target.toAbsolutePath().getParent()),
                "." + target.getFileName(), ".tmp");
        try {
            Files.move(Files.write(tmp, data), target, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
        } finally {
            Files.deleteIfExists(tmp);
        }
    }
}
