package dev.terrace.spark;

import java.io.ByteArrayOutputStream;

/** A growable byte buffer whose contents can be read without a copy. */
final class ChunkBuffer extends ByteArrayOutputStream {
    ChunkBuffer(int initial) {
        super(initial);
    }

    byte[] array() {
        return buf;
    }

    int capacity() {
        return buf.length;
    }
}
