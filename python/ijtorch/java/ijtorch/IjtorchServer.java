package ijtorch;

import ij.IJ;
import ij.Prefs;
import java.io.*;
import java.nio.charset.StandardCharsets;
import java.nio.file.*;
import java.util.*;

/**
 * Where the ijtorch server of a Fiji without Python is ({@link IjtorchRemote} talks to it): the URL from the
 * Prefs/system property {@code ijtorch.server}, {@code IJTORCH_SERVER} or {@code server.url} in {@code
 * Fiji.app/ijtorch.properties} (written by "ijtorch install-fiji"); a token from {@code ijtorch.token},
 * {@code IJTORCH_TOKEN} or {@code server.token}, sent as {@code Authorization: Bearer}.
 */
public final class IjtorchServer {

    private IjtorchServer() {
    }

    /** The configured server URL without a trailing slash, or null. */
    public static String url() {
        String url = first(Prefs.get("ijtorch.server", ""), System.getProperty("ijtorch.server"),
                System.getenv("IJTORCH_SERVER"), installedProperty("server.url"));
        return url == null ? null : url.trim().replaceAll("/+$", "");
    }

    public static boolean configured() {
        return url() != null;
    }

    /** The bearer token, or null. */
    static String token() {
        return first(System.getProperty("ijtorch.token"), System.getenv("IJTORCH_TOKEN"), installedProperty("server.token"));
    }

    private static String first(String... values) {
        return Arrays.stream(values).filter(v -> v != null && !v.trim().isEmpty()).findFirst().orElse(null);
    }

    /** A key of Fiji.app/ijtorch.properties, or null; the file is found next to the folder of this shim's
     *  jar (plugins/ or jars/), whatever the working directory, else in the launcher's folders or ImageJ's. */
    static String installedProperty(String key) {
        List<String> dirs = new ArrayList<>(Arrays.asList(System.getProperty("imagej.dir"),
                System.getProperty("fiji.dir"), System.getProperty("ij.dir"), System.getProperty("plugins.dir"),
                IJ.getDirectory("imagej")));
        try {  // no code source for classes defined by ijtorch.attach
            Path jar = Paths.get(IjtorchServer.class.getProtectionDomain().getCodeSource().getLocation().toURI());
            dirs.addAll(0, List.of(jar.getParent().toString(), jar.getParent().getParent().toString()));
        } catch (Exception ignored) {
        }
        for (String d : dirs) {
            try {
                return properties(Files.readAllBytes(Paths.get(d, "ijtorch.properties"))).getProperty(key);
            } catch (Exception absent) {  // null folder, or no such file: the next one
            }
        }
        return null;
    }

    static Properties properties(byte[] text) throws IOException {
        Properties p = new Properties();
        p.load(new StringReader(new String(text, StandardCharsets.UTF_8)));
        return p;
    }

    /** The message for a failed remote call, as a macro error shows it. */
    public static String describe(Exception e) {
        if (e instanceof java.net.ConnectException) {
            return "cannot reach the ijtorch server at " + url() + " (is 'ijtorch serve' running?)";
        }
        return e instanceof IjtorchRemote.RemoteError ? e.getMessage()
                : e.getClass().getSimpleName() + ": " + e.getMessage();
    }
}
