//! Reading arguments from and building results for Java, with every failure
//! (null where a value is required, bad ranges) turned into a `NativeError`.

use jni::JNIEnv;
use jni::objects::{JByteArray, JByteBuffer, JIntArray, JObject, JObjectArray, JString};

use crate::boundary::bad_argument;
use crate::error::{NativeError, NativeResult};

pub(crate) fn string(env: &mut JNIEnv<'_>, what: &str, s: &JString<'_>) -> NativeResult<String> {
    if s.is_null() {
        return Err(NativeError::invalid(format!("{what} is null")));
    }
    let java = env.get_string(s).map_err(|e| bad_argument(what, e))?;
    Ok(String::from(java))
}

pub(crate) fn bytes(
    env: &mut JNIEnv<'_>,
    what: &str,
    array: &JByteArray<'_>,
) -> NativeResult<Vec<u8>> {
    if array.is_null() {
        return Err(NativeError::invalid(format!("{what} is null")));
    }
    env.convert_byte_array(array)
        .map_err(|e| bad_argument(what, e))
}

pub(crate) fn ints(
    env: &mut JNIEnv<'_>,
    what: &str,
    array: &JIntArray<'_>,
) -> NativeResult<Vec<i32>> {
    if array.is_null() {
        return Err(NativeError::invalid(format!("{what} is null")));
    }
    let len = env
        .get_array_length(array)
        .map_err(|e| bad_argument(what, e))?;
    let mut out = vec![0i32; len as usize];
    env.get_int_array_region(array, 0, &mut out)
        .map_err(|e| bad_argument(what, e))?;
    Ok(out)
}

pub(crate) fn object_array_len(
    env: &mut JNIEnv<'_>,
    what: &str,
    array: &JObjectArray<'_>,
) -> NativeResult<usize> {
    if array.is_null() {
        return Err(NativeError::invalid(format!("{what} is null")));
    }
    let len = env
        .get_array_length(array)
        .map_err(|e| bad_argument(what, e))?;
    Ok(len as usize)
}

/// Element `index` of a `String[]`, `None` for a null element.
pub(crate) fn string_element(
    env: &mut JNIEnv<'_>,
    what: &str,
    array: &JObjectArray<'_>,
    index: usize,
) -> NativeResult<Option<String>> {
    let element = env
        .get_object_array_element(array, index as i32)
        .map_err(|e| bad_argument(what, e))?;
    if element.is_null() {
        return Ok(None);
    }
    let s = JString::from(element);
    let value = string(env, what, &s)?;
    env.delete_local_ref(s).map_err(|e| bad_argument(what, e))?;
    Ok(Some(value))
}

/// Element `index` of a `byte[][]`.
pub(crate) fn bytes_element(
    env: &mut JNIEnv<'_>,
    what: &str,
    array: &JObjectArray<'_>,
    index: usize,
) -> NativeResult<Vec<u8>> {
    let element = env
        .get_object_array_element(array, index as i32)
        .map_err(|e| bad_argument(what, e))?;
    let a = JByteArray::from(element);
    let value = bytes(env, what, &a)?;
    env.delete_local_ref(a).map_err(|e| bad_argument(what, e))?;
    Ok(value)
}

/// A `String[]` of `key, value, key, value, ...`.
pub(crate) fn pairs(
    env: &mut JNIEnv<'_>,
    array: &JObjectArray<'_>,
) -> NativeResult<Vec<(String, String)>> {
    let len = object_array_len(env, "configuration", array)?;
    if len % 2 != 0 {
        return Err(NativeError::invalid(
            "configuration must be key, value pairs",
        ));
    }
    let mut out = Vec::with_capacity(len / 2);
    for i in (0..len).step_by(2) {
        let key = string_element(env, "configuration key", array, i)?
            .ok_or_else(|| NativeError::invalid("configuration key is null"))?;
        let value = string_element(env, "configuration value", array, i + 1)?.unwrap_or_default();
        out.push((key, value));
    }
    Ok(out)
}

/// A new `String[]` holding `values`.
pub(crate) fn string_array<'local>(
    env: &mut JNIEnv<'local>,
    values: &[String],
) -> NativeResult<JObjectArray<'local>> {
    let array = env
        .new_object_array(values.len() as i32, "java/lang/String", JObject::null())
        .map_err(|e| NativeError::jni("allocate String[]", e))?;
    for (i, value) in values.iter().enumerate() {
        let s = env
            .new_string(value)
            .map_err(|e| NativeError::jni("allocate String", e))?;
        env.set_object_array_element(&array, i as i32, &s)
            .map_err(|e| NativeError::jni("fill String[]", e))?;
        env.delete_local_ref(s)
            .map_err(|e| NativeError::jni("free String", e))?;
    }
    Ok(array)
}

/// The address and capacity of a direct `ByteBuffer`. The memory stays valid
/// while Java keeps the buffer unrecycled: for the length of the JNI call.
pub(crate) fn direct_buffer(
    env: &mut JNIEnv<'_>,
    what: &str,
    buffer: &JByteBuffer<'_>,
) -> NativeResult<(*mut u8, usize)> {
    if buffer.is_null() {
        return Err(NativeError::invalid(format!("{what} is null")));
    }
    let address = env
        .get_direct_buffer_address(buffer)
        .map_err(|e| NativeError::invalid(format!("{what} is not a direct ByteBuffer: {e}")))?;
    let capacity = env
        .get_direct_buffer_capacity(buffer)
        .map_err(|e| NativeError::invalid(format!("{what}: no capacity: {e}")))?;
    Ok((address, capacity))
}

/// The memory of a direct `ByteBuffer` from `offset` for `len` bytes, checked
/// against the buffer's capacity. The pointer is valid while the buffer is
/// reachable and its memory not freed: for the length of the JNI call (Java
/// holds the buffer on its stack).
pub(crate) fn direct_region(
    env: &mut JNIEnv<'_>,
    what: &str,
    buffer: &JByteBuffer<'_>,
    offset: i32,
    len: i32,
) -> NativeResult<*mut u8> {
    let (address, capacity) = direct_buffer(env, what, buffer)?;
    let (Ok(offset), Ok(len)) = (usize::try_from(offset), usize::try_from(len)) else {
        return Err(NativeError::invalid(format!(
            "{what}: negative offset {offset} or length {len}"
        )));
    };
    if offset.checked_add(len).is_none_or(|end| end > capacity) {
        return Err(NativeError::invalid(format!(
            "{what}: range {offset}+{len} exceeds the buffer's capacity {capacity}"
        )));
    }
    // SAFETY: `offset <= capacity` was checked above, so the result points
    // into (or one past the end of) the buffer's allocation.
    Ok(unsafe { address.add(offset) })
}
