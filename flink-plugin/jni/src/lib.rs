//! placeholder: JNI entry points for the Flink adapter.
