//! The bundled UCI digits data (see `data/README.md` for provenance and licence).

use std::io::Read;

/// The gzipped CSV as shipped by scikit-learn: 1,797 rows of 64 pixels (0..16) and a label.
const DIGITS_CSV_GZ: &[u8] = include_bytes!("../../data/digits.csv.gz");

/// Pixels per image.
pub const PIXELS: usize = 64;

/// The digits images as row-major pixel values (0..16) and their labels (0..9).
///
/// # Examples
/// ```
/// let (pixels, labels) = headstart::demo::digits();
/// assert_eq!((labels.len(), pixels.len()), (1797, 1797 * 64));
/// ```
pub fn digits() -> (Vec<f32>, Vec<i64>) {
    let mut text = String::new();
    flate2::read::GzDecoder::new(DIGITS_CSV_GZ)
        .read_to_string(&mut text)
        .expect("the embedded digits file is valid gzip");
    let mut pixels = Vec::with_capacity(1797 * PIXELS);
    let mut labels = Vec::with_capacity(1797);
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let values: Vec<f32> = line
            .split(',')
            .map(|v| v.trim().parse().expect("numeric CSV"))
            .collect();
        assert_eq!(values.len(), PIXELS + 1, "65 columns per row");
        pixels.extend_from_slice(&values[..PIXELS]);
        labels.push(values[PIXELS] as i64);
    }
    (pixels, labels)
}
