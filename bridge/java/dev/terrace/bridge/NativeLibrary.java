package dev.terrace.bridge;

import java.io.IOException;
import java.io.InputStream;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.Locale;

/**
 * Loads the native library behind {@link NativeBridge} once per class loader: the copy an
 * operator names (a path), else the linux-x86_64 copy the adapter jar bundles at {@link
 * #BUNDLED_LIBRARY}. Both engine adapters (Flink, Spark) load it the same way.
 */
public final class NativeLibrary {
    /** Where the jar build scripts put the native library inside an adapter jar. */
    public static final String BUNDLED_LIBRARY = "/native/linux-x86_64/libterrace_jni.so";

    private static volatile boolean loaded;

    private NativeLibrary() {}

    /**
     * Loads the library and checks its ABI version.
     *
     * @param path a library to load instead of the bundled one, or null/blank
     * @param pathKey the configuration key that names {@code path}, for error messages
     */
    public static void ensureLoaded(String path, String pathKey) {
        if (loaded) {
            return;
        }
        synchronized (NativeLibrary.class) {
            if (loaded) {
                return;
            }
            if (path != null && !path.trim().isEmpty()) {
                System.load(path.trim());
            } else {
                System.load(extractBundled(pathKey).toString());
            }
            int abi = NativeBridge.abiVersion();
            if (abi != NativeBridge.ABI_VERSION) {
                throw new IllegalStateException(
                        "terrace_jni native library ABI "
                                + abi
                                + " does not match the Java adapter's "
                                + NativeBridge.ABI_VERSION);
            }
            loaded = true;
        }
    }

    /**
     * Copies the library bundled in the jar to a private temporary file (deleted when the JVM
     * exits) and returns its path. A fresh file per class loader, so two class loaders can each
     * load their own copy.
     */
    private static Path extractBundled(String pathKey) {
        String os = System.getProperty("os.name", "").toLowerCase(Locale.ROOT);
        String arch = System.getProperty("os.arch", "");
        if (!os.contains("linux") || !(arch.equals("amd64") || arch.equals("x86_64"))) {
            throw new UnsatisfiedLinkError(
                    "the Terrace jar bundles a linux-x86_64 native library only; this JVM runs on "
                            + os
                            + "/"
                            + arch
                            + " (set "
                            + pathKey
                            + " to a library built for it)");
        }
        try (InputStream in = NativeLibrary.class.getResourceAsStream(BUNDLED_LIBRARY)) {
            if (in == null) {
                throw new UnsatisfiedLinkError(
                        BUNDLED_LIBRARY
                                + " is missing from the Terrace jar; rebuild the jar or set "
                                + pathKey);
            }
            Path file = Files.createTempFile("libterrace_jni-", ".so");
            file.toFile().deleteOnExit();
            Files.copy(in, file, StandardCopyOption.REPLACE_EXISTING);
            return file;
        } catch (IOException e) {
            throw new UncheckedIOException("extract the Terrace native library", e);
        }
    }
}
