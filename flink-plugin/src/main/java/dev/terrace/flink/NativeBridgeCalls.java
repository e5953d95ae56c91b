package dev.terrace.flink;

import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/** Small helpers around native calls. */
final class NativeBridgeCalls {
    private static final Logger LOG = LoggerFactory.getLogger(NativeBridgeCalls.class);

    interface Call<T> {
        T call() throws Exception;
    }

    interface Run {
        void run() throws Exception;
    }

    static void quietly(Run r) {
        try {
            r.run();
        } catch (Throwable t) {
            LOG.warn("ignored failure in native call", t);
        }
    }

    private NativeBridgeCalls() {}
}
