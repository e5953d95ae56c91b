package dev.terrace.bridge;

import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/** Small helpers around native calls. */
public final class NativeBridgeCalls {
    private static final Logger LOG = LoggerFactory.getLogger(NativeBridgeCalls.class);

    public interface Call<T> {
        T call() throws Exception;
    }

    public interface Run {
        void run() throws Exception;
    }

    public static void quietly(Run r) {
        try {
            r.run();
        } catch (Throwable t) {
            LOG.warn("ignored failure in native call", t);
        }
    }

    private NativeBridgeCalls() {}
}
