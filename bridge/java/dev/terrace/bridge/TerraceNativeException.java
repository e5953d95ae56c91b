package dev.terrace.bridge;

import java.io.IOException;

/** Thrown by {@link NativeBridge} methods; {@link #kind} tells the agents how to map it. */
public class TerraceNativeException extends IOException {
    private static final long serialVersionUID = 1L;

    /** Error classes the Rust side distinguishes. Ordinals are part of the JNI ABI. */
    public enum Kind {
        /** A bug or an unexpected state (including a Rust panic). */
        INTERNAL,
        /** The partition is gone (worker lost, released, unknown): Flink must re-run the producer. */
        PARTITION_NOT_FOUND,
        /** CRC mismatch on read. */
        DATA_CORRUPTION,
        /** A master or worker is unreachable or overloaded, after retries. */
        IO,
        /** Bad configuration or arguments. */
        INVALID_ARGUMENT,
        /** The handle was closed, or the agent is shutting down. */
        CLOSED
    }

    private final Kind kind;

    /** Called by the native side: {@code new TerraceNativeException(kindOrdinal, message)}. */
    public TerraceNativeException(int kindOrdinal, String message) {
        super(message);
        Kind[] kinds = Kind.values();
        this.kind =
                kindOrdinal >= 0 && kindOrdinal < kinds.length ? kinds[kindOrdinal] : Kind.INTERNAL;
    }

    public Kind kind() {
        return kind;
    }

    @Override
    public String toString() {
        return getClass().getName() + "[" + kind + "]: " + getMessage();
    }
}
