//! A check of every page header of a column chunk before the Parquet reader decodes it.
//!
//! The parquet crate allocates what a page header claims: a buffer of the page's
//! uncompressed size (up to 2 GiB) for every compressed page, and the header's own binary
//! fields (statistics) at the length they claim. A hostile file of a few hundred bytes can
//! claim them all. This walk reads the headers alone (Thrift compact protocol) and refuses a
//! chunk outside the file, a page running past its chunk, a binary field longer than the
//! bytes left, and a page whose uncompressed size or value count is above the limit, so the
//! reader never sees such a header.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// The default largest uncompressed page and value count per page: 1 GiB and 2³⁰ values.
/// Real writers use pages of about 1 MiB (pyarrow, Spark, polars). Raised with
/// `HEADSTART_MAX_PAGE_MIB`.
pub const DEFAULT_MAX_PAGE_BYTES: u64 = 1 << 30;

/// The environment variable that sets the page limit, in MiB.
pub const MAX_PAGE_ENV: &str = "HEADSTART_MAX_PAGE_MIB";

/// Nesting deeper than this in a page header is refused (real headers nest 3 levels).
const MAX_DEPTH: usize = 16;

/// The page limit in bytes: `HEADSTART_MAX_PAGE_MIB` if set, else [`DEFAULT_MAX_PAGE_BYTES`].
///
/// # Errors
/// A value that is not a positive whole number of MiB.
pub fn max_page_bytes() -> Result<u64, String> {
    match std::env::var(MAX_PAGE_ENV) {
        Err(_) => Ok(DEFAULT_MAX_PAGE_BYTES),
        Ok(text) => text
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|&mib| mib > 0)
            .and_then(|mib| mib.checked_mul(1 << 20))
            .ok_or_else(|| format!("{MAX_PAGE_ENV}={text:?} is not a positive number of MiB")),
    }
}

/// Walks the page headers of the column chunk at bytes `start..start + len` of `file`
/// (`file_len` bytes long). On a refusal, the message says which page and why.
pub(crate) fn check_chunk(
    file: &File,
    start: u64,
    len: u64,
    file_len: u64,
    limit: u64,
) -> Result<(), String> {
    let end = start
        .checked_add(len)
        .filter(|&end| end <= file_len)
        .ok_or_else(|| {
            format!(
                "its bytes {start}..{} lie outside the {file_len}-byte file",
                start.saturating_add(len)
            )
        })?;
    let mut pages = Cursor {
        file,
        pos: start,
        end,
        buf: Vec::new(),
        buf_start: start,
    };
    let mut index = 0u64;
    while pages.pos < end {
        let at = pages.pos;
        let page = |what: String| format!("page {index} (at byte {at}): {what}");
        let header = pages.page_header().map_err(page)?;
        let limit_text = || format!("above the limit of {limit} bytes (raise it with {MAX_PAGE_ENV})");
        if header.compressed < 0 || header.uncompressed < 0 || header.values < 0 {
            return Err(page("a negative size or value count".into()));
        }
        if header.uncompressed as u64 > limit {
            return Err(page(format!(
                "claims {} uncompressed bytes, {}",
                header.uncompressed,
                limit_text()
            )));
        }
        if header.values as u64 > limit {
            return Err(page(format!("claims {} values, {}", header.values, limit_text())));
        }
        // The parquet crate unwraps the type's own header: a data page without its
        // data_page_header would panic there.
        let needs = match header.kind {
            0 => Some((header.has_data_v1, "data page", "data_page_header")),
            2 => Some((header.has_dictionary, "dictionary page", "dictionary_page_header")),
            3 => Some((header.has_data_v2, "data page v2", "data_page_header_v2")),
            _ => None,
        };
        if let Some((false, kind, field)) = needs {
            return Err(page(format!("a {kind} without its {field}")));
        }
        let body_end = pages.pos + header.compressed as u64;
        if body_end > end {
            return Err(page(format!(
                "its {} bytes run past the end of the column chunk (byte {end})",
                header.compressed
            )));
        }
        pages.pos = body_end;
        index += 1;
    }
    Ok(())
}

/// What the walk needs of a page header.
#[derive(Default)]
struct PageHeader {
    uncompressed: i64,
    compressed: i64,
    /// The value count of a data (v1 or v2) or dictionary page.
    values: i64,
    /// The page type (0 data, 1 index, 2 dictionary, 3 data v2).
    kind: i32,
    has_data_v1: bool,
    has_dictionary: bool,
    has_data_v2: bool,
}

/// Reads a byte range of the file in blocks, forward only.
struct Cursor<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
    buf: Vec<u8>,
    buf_start: u64,
}

/// Offered each field of a struct (its id and Thrift type); returns whether it read the value.
type FieldTaker<'t, 'a> = dyn FnMut(&mut Cursor<'a>, i16, u8) -> Result<bool, String> + 't;

/// Thrift compact-protocol types.
mod ty {
    pub const TRUE: u8 = 1;
    pub const FALSE: u8 = 2;
    pub const BYTE: u8 = 3;
    pub const I16: u8 = 4;
    pub const I32: u8 = 5;
    pub const I64: u8 = 6;
    pub const DOUBLE: u8 = 7;
    pub const BINARY: u8 = 8;
    pub const LIST: u8 = 9;
    pub const SET: u8 = 10;
    pub const MAP: u8 = 11;
    pub const STRUCT: u8 = 12;
}

impl<'a> Cursor<'a> {
    fn byte(&mut self) -> Result<u8, String> {
        if self.pos >= self.end {
            return Err(format!(
                "the header runs past the end of the column chunk (byte {})",
                self.end
            ));
        }
        let offset = self.pos.wrapping_sub(self.buf_start);
        if self.pos < self.buf_start || offset >= self.buf.len() as u64 {
            let want = (self.end - self.pos).min(4096) as usize;
            self.buf.resize(want, 0);
            self.file
                .read_exact_at(&mut self.buf, self.pos)
                .map_err(|e| format!("reading the header: {e}"))?;
            self.buf_start = self.pos;
        }
        let b = self.buf[(self.pos - self.buf_start) as usize];
        self.pos += 1;
        Ok(b)
    }

    fn skip(&mut self, n: u64) -> Result<(), String> {
        if n > self.end - self.pos {
            return Err(format!(
                "a field of {n} bytes in the header runs past the end of the column chunk (byte {})",
                self.end
            ));
        }
        self.pos += n;
        Ok(())
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            let b = self.byte()?;
            if shift == 63 && b > 1 {
                break;
            }
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("a varint longer than 64 bits in the header".into())
    }

    fn zigzag(&mut self) -> Result<i64, String> {
        let v = self.varint()?;
        Ok((v >> 1) as i64 ^ -((v & 1) as i64))
    }

    fn page_header(&mut self) -> Result<PageHeader, String> {
        let mut header = PageHeader::default();
        self.fields(0, &mut |cursor, id, kind| match (id, kind) {
            (1, ty::I32) => {
                header.kind = i32::try_from(cursor.zigzag()?).unwrap_or(-1);
                Ok(true)
            }
            (2, ty::I32) => {
                header.uncompressed = cursor.zigzag()?;
                Ok(true)
            }
            (3, ty::I32) => {
                header.compressed = cursor.zigzag()?;
                Ok(true)
            }
            // data_page_header, dictionary_page_header, data_page_header_v2: field 1 is
            // num_values in each.
            (5 | 7 | 8, ty::STRUCT) => {
                match id {
                    5 => header.has_data_v1 = true,
                    7 => header.has_dictionary = true,
                    _ => header.has_data_v2 = true,
                }
                cursor.fields(1, &mut |cursor, id, kind| {
                    if (id, kind) == (1, ty::I32) {
                        header.values = header.values.max(cursor.zigzag()?);
                        return Ok(true);
                    }
                    Ok(false)
                })?;
                Ok(true)
            }
            _ => Ok(false),
        })?;
        Ok(header)
    }

    /// Reads a struct's fields to its stop byte, offering each to `take` (which returns
    /// whether it consumed the value) and skipping the rest.
    fn fields(&mut self, depth: usize, take: &mut FieldTaker<'_, 'a>) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!("the header nests deeper than {MAX_DEPTH} levels"));
        }
        let mut id: i16 = 0;
        loop {
            let b = self.byte()?;
            if b == 0 {
                return Ok(());
            }
            let (delta, kind) = (b >> 4, b & 0x0f);
            id = if delta == 0 {
                i16::try_from(self.zigzag()?)
                    .map_err(|_| "a field id beyond i16 in the header".to_string())?
            } else {
                id.wrapping_add(i16::from(delta))
            };
            if !take(self, id, kind)? {
                self.skip_value(kind, depth)?;
            }
        }
    }

    fn skip_value(&mut self, kind: u8, depth: usize) -> Result<(), String> {
        match kind {
            ty::TRUE | ty::FALSE => Ok(()),
            ty::BYTE => self.byte().map(drop),
            ty::I16 | ty::I32 | ty::I64 => self.varint().map(drop),
            ty::DOUBLE => self.skip(8),
            ty::BINARY => {
                let n = self.varint()?;
                self.skip(n)
            }
            ty::LIST | ty::SET => {
                let b = self.byte()?;
                let (size, elem) = (u64::from(b >> 4), b & 0x0f);
                let size = if size == 15 { self.varint()? } else { size };
                self.skip_many(size, elem, depth)
            }
            ty::MAP => {
                let size = self.varint()?;
                if size == 0 {
                    return Ok(());
                }
                let kinds = self.byte()?;
                if size > self.end - self.pos {
                    return Err(format!(
                        "a map of {size} entries in the header runs past the end of the column chunk"
                    ));
                }
                for _ in 0..size {
                    self.skip_element(kinds >> 4, depth)?;
                    self.skip_element(kinds & 0x0f, depth)?;
                }
                Ok(())
            }
            ty::STRUCT => self.fields(depth + 1, &mut |_, _, _| Ok(false)),
            other => Err(format!("unknown Thrift type {other} in the header")),
        }
    }

    /// `size` elements of a list: each takes at least one byte, so a size beyond the bytes
    /// left is refused before the loop.
    fn skip_many(&mut self, size: u64, elem: u8, depth: usize) -> Result<(), String> {
        if size > self.end - self.pos {
            return Err(format!(
                "a list of {size} elements in the header runs past the end of the column chunk"
            ));
        }
        for _ in 0..size {
            self.skip_element(elem, depth)?;
        }
        Ok(())
    }

    /// A list element: booleans take a byte each there.
    fn skip_element(&mut self, kind: u8, depth: usize) -> Result<(), String> {
        match kind {
            ty::TRUE | ty::FALSE => self.byte().map(drop),
            other => self.skip_value(other, depth + 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Thrift compact encoding of a field header with a short delta.
    fn field(delta: u8, kind: u8) -> u8 {
        (delta << 4) | kind
    }

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn zigzag(v: i64, out: &mut Vec<u8>) {
        varint(((v << 1) ^ (v >> 63)) as u64, out);
    }

    /// A DATA_PAGE header (type 0) with `values` values, then `extra` bytes of fields.
    fn header(uncompressed: i64, compressed: i64, values: i64, extra: &[u8]) -> Vec<u8> {
        let mut h = Vec::new();
        h.push(field(1, ty::I32));
        zigzag(0, &mut h);
        h.push(field(1, ty::I32));
        zigzag(uncompressed, &mut h);
        h.push(field(1, ty::I32));
        zigzag(compressed, &mut h);
        h.extend_from_slice(extra);
        // Field 5 (delta 2 from 3): data_page_header { 1: num_values, 2..4: encodings }.
        h.push(field(2, ty::STRUCT));
        for v in [values, 0, 0, 0] {
            h.push(field(1, ty::I32));
            zigzag(v, &mut h);
        }
        h.push(0);
        h.push(0);
        h
    }

    fn check(bytes: &[u8], limit: u64) -> Result<(), String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chunk");
        std::fs::write(&path, bytes).unwrap();
        let file = File::open(&path).unwrap();
        check_chunk(&file, 0, bytes.len() as u64, bytes.len() as u64, limit)
    }

    #[test]
    fn pages_within_the_chunk_and_the_limit_pass() {
        let mut chunk = header(10, 4, 3, &[]);
        chunk.extend_from_slice(&[1, 2, 3, 4]);
        chunk.extend(header(0, 0, 0, &[]));
        assert_eq!(check(&chunk, 10), Ok(()));
    }

    #[test]
    fn a_page_claiming_more_than_the_limit_is_refused_with_its_size_and_the_limit() {
        let mut chunk = header(i32::MAX as i64, 4, 3, &[]);
        chunk.extend_from_slice(&[1, 2, 3, 4]);
        let err = check(&chunk, 1 << 20).unwrap_err();
        assert!(
            err.contains("page 0") && err.contains("2147483647 uncompressed bytes"),
            "{err}"
        );
        assert!(err.contains("1048576") && err.contains(MAX_PAGE_ENV), "{err}");
        // Within a raised limit it passes.
        assert_eq!(check(&chunk, 1 << 31), Ok(()));
        let values = header(4, 0, 1 << 21, &[]);
        assert!(check(&values, 1 << 20).unwrap_err().contains("2097152 values"));
    }

    #[test]
    fn a_page_or_a_field_past_the_chunk_is_refused() {
        let short = header(4, 100, 1, &[]);
        let err = check(&short, 1 << 20).unwrap_err();
        assert!(err.contains("run past the end of the column chunk"), "{err}");
        // Field 4 (crc, delta 1 from 3) as a binary claiming 2⁶⁰ bytes.
        let mut extra = vec![field(1, ty::BINARY)];
        varint(1 << 60, &mut extra);
        let err = check(&header(4, 0, 1, &extra), 1 << 20).unwrap_err();
        assert!(err.contains("1152921504606846976 bytes"), "{err}");
        let mut list = vec![field(1, ty::LIST), 0xf5];
        varint(1 << 40, &mut list);
        assert!(
            check(&header(4, 0, 1, &list), 1 << 20)
                .unwrap_err()
                .contains("list of")
        );
        let truncated = &header(4, 0, 1, &[])[..5];
        assert!(
            check(truncated, 1 << 20)
                .unwrap_err()
                .contains("header runs past")
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chunk");
        std::fs::write(&path, [0u8; 8]).unwrap();
        let file = File::open(&path).unwrap();
        assert!(
            check_chunk(&file, 4, 8, 8, 1)
                .unwrap_err()
                .contains("outside the 8-byte file")
        );
    }

    #[test]
    fn deep_nesting_negative_sizes_and_unknown_types_are_refused() {
        let nested: Vec<u8> = std::iter::repeat_n(field(1, ty::STRUCT), 40).collect();
        let err = check(&header(4, 0, 1, &nested), 1 << 20).unwrap_err();
        assert!(err.contains("deeper than"), "{err}");
        assert!(
            check(&header(-1, 0, 1, &[]), 1 << 20)
                .unwrap_err()
                .contains("negative")
        );
        let unknown = [field(1, 13)];
        assert!(
            check(&header(4, 0, 1, &unknown), 1 << 20)
                .unwrap_err()
                .contains("unknown Thrift type 13")
        );
    }

    #[test]
    fn a_page_without_its_own_header_is_refused() {
        // Type 0 (data page), sizes 0, and no field 5: the parquet crate would unwrap None.
        let mut h = vec![field(1, ty::I32)];
        zigzag(0, &mut h);
        for _ in 0..2 {
            h.push(field(1, ty::I32));
            zigzag(0, &mut h);
        }
        h.push(0);
        let err = check(&h, 1 << 20).unwrap_err();
        assert!(err.contains("a data page without its data_page_header"), "{err}");
        // The same for a dictionary page (type 2) and a data page v2 (type 3).
        for (kind, field_name) in [(2, "dictionary_page_header"), (3, "data_page_header_v2")] {
            h[1] = (kind << 1) as u8;
            assert!(check(&h, 1 << 20).unwrap_err().contains(field_name));
        }
    }
}
