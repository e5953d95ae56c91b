//! The FFI boundary: every JNI entry point runs its body through [`entry`],
//! which catches panics and turns errors into a thrown
//! `dev.terrace.bridge.TerraceNativeException`, so nothing unwinds into the JVM.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};

use jni::JNIEnv;
use jni::objects::JValue;

use crate::error::{NativeError, NativeErrorKind, NativeResult};

pub(crate) const EXCEPTION_CLASS: &str = "dev/terrace/bridge/TerraceNativeException";

/// Runs `body`; on an error or a panic throws a Java exception and returns
/// `fallback` (which Java never sees: the pending exception wins).
pub(crate) fn entry<'local, T>(
    env: &mut JNIEnv<'local>,
    what: &str,
    fallback: T,
    body: impl FnOnce(&mut JNIEnv<'local>) -> NativeResult<T>,
) -> T {
    let outcome = catch_unwind(AssertUnwindSafe(|| body(&mut *env)));
    let error = match outcome {
        Ok(Ok(value)) => return value,
        Ok(Err(error)) => error,
        Err(panic) => {
            NativeError::internal(format!("{what}: panicked: {}", panic_message(&*panic)))
        }
    };
    throw(env, what, &error);
    fallback
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

/// Throws `error` as a `TerraceNativeException(kind, message)`, unless a Java
/// exception is already pending (a failed JNI call raised it: that one is
/// more precise and stays).
fn throw(env: &mut JNIEnv<'_>, what: &str, error: &NativeError) {
    if env.exception_check().unwrap_or(true) {
        return;
    }
    let message = format!("{what}: {}", error.message);
    let thrown = (|| -> jni::errors::Result<()> {
        let text = env.new_string(&message)?;
        let exception = env.new_object(
            EXCEPTION_CLASS,
            "(ILjava/lang/String;)V",
            &[JValue::Int(error.kind as i32), JValue::Object(&text)],
        )?;
        env.throw(jni::objects::JThrowable::from(exception))
    })();
    if thrown.is_err() && !env.exception_check().unwrap_or(true) {
        // Last resort: the exception class could not be built (class loader
        // trouble); a RuntimeException still carries the message.
        let kind = error.kind;
        let _ = env.throw_new(
            "java/lang/RuntimeException",
            format!("{message} ({kind:?})"),
        );
    }
}

/// Kind to use for errors raised by a failed argument conversion.
pub(crate) fn bad_argument(what: &str, error: jni::errors::Error) -> NativeError {
    NativeError::new(NativeErrorKind::InvalidArgument, format!("{what}: {error}"))
}
