//! NumPy's `.npy` format (versions 1–3), for vector queries and embedding
//! import/export: little-endian `float16`, `float32` and `float64` arrays in
//! C order, read into `f32`.

use std::path::Path;

use crate::error::{io, IndexError, Result};

/// An array read from a `.npy` file, as `f32` in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    /// The shape, outermost first (`[rows, dim]` for a matrix).
    pub shape: Vec<usize>,
    /// The values, `shape.iter().product()` of them.
    pub data: Vec<f32>,
    /// The stored element type: `"<f2"`, `"<f4"` or `"<f8"`.
    pub descr: String,
}

impl NpyArray {
    /// The array as `rows × dim` (a 1-D array is one row); an error naming
    /// `path` for other shapes.
    pub fn matrix(&self, path: &Path) -> Result<(usize, usize)> {
        match self.shape.as_slice() {
            [d] => Ok((1, *d)),
            [n, d] => Ok((*n, *d)),
            s => Err(corrupt(
                path,
                format!("shape {s:?}: expected one vector or a matrix of vectors (rows × dim)"),
            )),
        }
    }
}

fn corrupt(path: &Path, message: String) -> IndexError {
    IndexError::Corrupt {
        path: path.to_path_buf(),
        message,
    }
}

/// Reads `path`.
pub fn read(path: &Path) -> Result<NpyArray> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    parse(&bytes, path)
}

/// Parses the bytes of a `.npy` file; `path` names it in errors.
pub fn parse(bytes: &[u8], path: &Path) -> Result<NpyArray> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(corrupt(
            path,
            "not a .npy file (no \\x93NUMPY magic)".into(),
        ));
    }
    let major = bytes[6];
    let (header_len, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => {
            return Err(corrupt(
                path,
                format!(".npy version {v} is not supported (1, 2 and 3 are)"),
            ))
        }
    };
    let header = bytes
        .get(start..start + header_len)
        .ok_or_else(|| corrupt(path, "the header is cut short".into()))?;
    let header =
        std::str::from_utf8(header).map_err(|_| corrupt(path, "the header is not text".into()))?;
    let descr = dict_value(header, "descr")
        .ok_or_else(|| corrupt(path, format!("no 'descr' in the header {header:?}")))?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"').to_string();
    if dict_value(header, "fortran_order").is_some_and(|v| v.trim() == "True") {
        return Err(corrupt(
            path,
            "Fortran-ordered arrays are not supported (save with np.ascontiguousarray)".into(),
        ));
    }
    let shape_text = dict_value(header, "shape")
        .ok_or_else(|| corrupt(path, format!("no 'shape' in the header {header:?}")))?;
    let shape: Vec<usize> = shape_text
        .trim()
        .trim_start_matches('(')
        .trim_end_matches(')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| corrupt(path, format!("shape {shape_text}: {s:?} is not a size")))
        })
        .collect::<Result<_>>()?;
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| corrupt(path, format!("shape {shape:?} is too large")))?;
    let width = match descr.as_str() {
        "<f2" => 2,
        "<f4" => 4,
        "<f8" => 8,
        d => return Err(corrupt(path, format!("element type {d}: expected little-endian float16, float32 or float64 (<f2, <f4, <f8)"))),
    };
    let body = &bytes[start + header_len..];
    if body.len() != count * width {
        return Err(corrupt(
            path,
            format!(
                "shape {shape:?} of {descr} needs {} bytes of data, the file has {}",
                count * width,
                body.len()
            ),
        ));
    }
    let data: Vec<f32> = match width {
        2 => body
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        4 => body
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        _ => body
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32)
            .collect(),
    };
    Ok(NpyArray { shape, data, descr })
}

/// The text after `'key':` in a Python dict literal, up to the next
/// top-level comma (tuples kept whole).
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header
        .find(&format!("'{key}'"))
        .or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = &header[at + key.len() + 2..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let mut depth = 0;
    for (i, c) in rest.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' | '}' if depth == 0 => return Some(&rest[..i]),
            _ => {}
        }
    }
    Some(rest)
}

/// The bytes of a `.npy` (version 1) file holding `data` as a `rows × dim`
/// array of `float32` (`f16: false`) or `float16`.
pub fn encode(data: &[f32], rows: usize, dim: usize, f16: bool) -> Vec<u8> {
    let descr = if f16 { "<f2" } else { "<f4" };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({rows}, {dim}), }}");
    // Magic (6) + version (2) + length (2) + header + '\n', padded to 64 bytes.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    if f16 {
        data.iter()
            .for_each(|v| out.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes()));
    } else {
        data.iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_f32_and_f16_and_names_bad_files() {
        let data: Vec<f32> = (0..6).map(|i| i as f32 * 0.5 - 1.0).collect();
        let p = Path::new("q.npy");
        for f16 in [false, true] {
            let a = parse(&encode(&data, 2, 3, f16), p).unwrap();
            assert_eq!(a.shape, [2, 3]);
            assert_eq!(a.data, data);
            assert_eq!(a.matrix(p).unwrap(), (2, 3));
        }
        let mut cut = encode(&data, 2, 3, false);
        cut.truncate(cut.len() - 4);
        let e = parse(&cut, p).unwrap_err().to_string();
        assert!(e.contains("q.npy") && e.contains("needs 24 bytes"), "{e}");
        assert!(parse(b"hello world", p)
            .unwrap_err()
            .to_string()
            .contains("not a .npy file"));
        let i8 = [
            b"\x93NUMPY\x01\x00".as_slice(),
            &[58, 0],
            b"{'descr': '|i1', 'fortran_order': False, 'shape': (3,), }\n",
            &[1, 2, 3],
        ]
        .concat();
        let e = parse(&i8, p).unwrap_err().to_string();
        assert!(e.contains("element type |i1"), "{e}");
    }
}
