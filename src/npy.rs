//! Reading and writing NumPy `.npy` files of float32 (version 1/2 headers,
//! little-endian, C order): the exchange format for latents.

use std::path::Path;

use crate::error::{Error, Result};
use crate::fsutil::write_atomic;

const MAGIC: &[u8] = b"\x93NUMPY";

/// A float32 array: values and shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    pub data: Vec<f32>,
    pub shape: Vec<usize>,
}

pub fn read_f32(path: &Path) -> Result<Array> {
    let bytes = std::fs::read(path).map_err(|err| Error::Read {
        path: path.to_path_buf(),
        err,
    })?;
    parse_f32(&bytes).map_err(|detail| Error::BadLatent {
        path: path.to_path_buf(),
        detail,
    })
}

pub fn parse_f32(bytes: &[u8]) -> std::result::Result<Array, String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("not a .npy file (bad magic); save latents with numpy.save".into());
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let header = bytes
        .get(start..start + header_len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or("truncated or non-text .npy header")?;
    let field = |key: &str| -> Option<&str> {
        let i = header.find(&format!("'{key}'"))?;
        let rest = header[i + key.len() + 2..]
            .trim_start()
            .strip_prefix(':')?
            .trim_start();
        Some(rest)
    };
    let descr = field("descr").ok_or("header has no descr")?;
    if !(descr.starts_with("'<f4'") || descr.starts_with("'float32'")) {
        let d = descr.split(',').next().unwrap_or(descr);
        return Err(format!(
            "dtype {d} is not little-endian float32; convert with arr.astype(numpy.float32)"
        ));
    }
    if field("fortran_order").is_some_and(|v| v.starts_with("True")) {
        return Err(
            "Fortran-ordered arrays are not supported; save numpy.ascontiguousarray(arr)".into(),
        );
    }
    let shape_src = field("shape").ok_or("header has no shape")?;
    let inner = shape_src
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or("malformed shape in header")?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| format!("bad dimension {s:?}"))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let body = &bytes[start + header_len..];
    // Checked: a product that overflows would wrap to a size that can
    // match the file (2^62 x 4 to 0 bytes) and yield a shape that lies.
    let need = shape.iter().try_fold(4usize, |n, &d| n.checked_mul(d));
    if need != Some(body.len()) {
        return Err(match need {
            Some(n) => format!(
                "shape {shape:?} needs {n} bytes of data, the file has {}",
                body.len()
            ),
            None => format!("shape {shape:?} is larger than any file can hold"),
        });
    }
    let data = body
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(Array { data, shape })
}

/// Serialise as a version-1 `.npy` file.
///
/// ```
/// use clip2gan::npy::{parse_f32, to_bytes, Array};
/// let a = Array { data: vec![1.0, 2.0, 3.0, 4.0], shape: vec![2, 2] };
/// let bytes = to_bytes(&a);
/// assert_eq!(&bytes[..6], b"\x93NUMPY");
/// assert_eq!(parse_f32(&bytes).unwrap(), a);
/// ```
pub fn to_bytes(a: &Array) -> Vec<u8> {
    let dims: Vec<String> = a.shape.iter().map(|d| d.to_string()).collect();
    let shape = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    // Pad so that the data starts on a 64-byte boundary, ending in '\n'.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + a.data.len() * 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in &a.data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

pub fn write_f32(path: &Path, a: &Array) -> Result<()> {
    write_atomic(path, &to_bytes(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let a = Array {
            data: (0..6).map(|i| i as f32 * 0.5).collect(),
            shape: vec![2, 3],
        };
        assert_eq!(parse_f32(&to_bytes(&a)).unwrap(), a);
        let one = Array {
            data: vec![1.0; 4],
            shape: vec![4],
        };
        assert_eq!(parse_f32(&to_bytes(&one)).unwrap(), one);
    }

    #[test]
    fn rejects_wrong_dtype_and_truncation() {
        let mut b = to_bytes(&Array {
            data: vec![0.0; 4],
            shape: vec![4],
        });
        let err = parse_f32(&b[..b.len() - 1]).unwrap_err();
        assert!(err.contains("needs 16 bytes"), "{err}");
        let pos = b.windows(3).position(|w| w == b"<f4").unwrap();
        b[pos + 2] = b'8';
        assert!(parse_f32(&b)
            .unwrap_err()
            .contains("not little-endian float32"));
        assert!(parse_f32(b"hello world").unwrap_err().contains("magic"));
    }
}
