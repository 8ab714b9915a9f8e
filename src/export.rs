//! Heads as safetensors files that PyTorch loads.
//!
//! A head file holds `{prefix}weight` (F32 `[C, d]`), `{prefix}bias` (F32 `[C]`) and
//! `{prefix}class_ids` (I64 `[C]`; row i is class `class_ids[i]`), and `__metadata__` with
//! `format` = `pt`, `headstart_version`, `form`, `scope`, `lambda`, `lambda_rule`, `bias`, `samples`, `dim`,
//! `classes` and `class_counts` (JSON lists), plus any extra entries the caller adds.
//! `docs/formats.md` specifies the file.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::solve::{Head, HeadInfo};

/// Why a head could not be written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// A file system error, with the path.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The safetensors library refused the data.
    #[error("{path}: not a valid safetensors file: {source}")]
    Format {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: safetensors::SafeTensorError,
    },
    /// The file lacks a tensor, or holds one of an unexpected shape or type.
    #[error("{path}: {what}")]
    Content {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
}

/// Serialises a head to safetensors bytes.
///
/// `extra` entries are added to `__metadata__` (they may not replace the standard keys).
///
/// # Examples
/// ```
/// use headstart::{export, stats::Stats, solve::{Solver, SolveOptions}};
/// let mut s = Stats::new(2);
/// s.update(&[1.0f32, 0.0, 0.0, 1.0], &[10, 20])?;
/// let head = Solver::new().solve(&s, &SolveOptions::default())?;
/// let bytes = export::to_safetensors(&head, "fc.", &Default::default());
/// let file = safetensors::SafeTensors::deserialize(&bytes)?;
/// assert_eq!(file.tensor("fc.weight")?.shape(), &[2, 2]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn to_safetensors(head: &Head, prefix: &str, extra: &BTreeMap<String, String>) -> Vec<u8> {
    let weight: Vec<u8> = head
        .weight
        .iter()
        .flat_map(|&w| (w as f32).to_le_bytes())
        .collect();
    let bias: Vec<u8> = head.bias.iter().flat_map(|&b| (b as f32).to_le_bytes()).collect();
    let ids: Vec<u8> = head.class_ids.iter().flat_map(|id| id.to_le_bytes()).collect();
    let c = head.rows();
    let tensors = [
        (
            format!("{prefix}weight"),
            TensorView::new(Dtype::F32, vec![c, head.dim], &weight),
        ),
        (
            format!("{prefix}bias"),
            TensorView::new(Dtype::F32, vec![c], &bias),
        ),
        (
            format!("{prefix}class_ids"),
            TensorView::new(Dtype::I64, vec![c], &ids),
        ),
    ]
    .map(|(name, view)| (name, view.expect("sizes match by construction")));

    let info = &head.info;
    let mut meta: HashMap<String, String> = extra.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let json = |v: &[_]| serde_json::to_string(v).expect("numbers serialise");
    for (key, value) in [
        ("format", "pt".to_string()),
        ("headstart_version", env!("CARGO_PKG_VERSION").to_string()),
        ("form", info.form.to_string()),
        ("scope", info.scope.to_string()),
        ("lambda", format!("{:?}", info.lambda)),
        ("lambda_rule", info.lambda_rule.to_string()),
        ("bias", info.bias.to_string()),
        ("samples", info.samples.to_string()),
        ("dim", head.dim.to_string()),
        ("classes", json(&head.class_ids)),
        (
            "class_counts",
            serde_json::to_string(&info.class_counts).expect("numbers serialise"),
        ),
        ("prefix", prefix.to_string()),
    ] {
        meta.insert(key.to_string(), value);
    }
    if let Some(e) = &info.expansion {
        meta.insert("expansion".to_string(), e.to_json());
    }
    safetensors::tensor::serialize(tensors, Some(meta)).expect("a head's header is small")
}

/// Writes a head atomically: a temporary file in the same folder, fsync, rename, fsync of
/// the folder. On any error no file is left at `path` (an existing file stays as it was).
///
/// # Errors
/// [`ExportError::Io`] naming the path.
pub fn write_head(
    path: &Path,
    head: &Head,
    prefix: &str,
    extra: &BTreeMap<String, String>,
) -> Result<(), ExportError> {
    write_atomically(path, &to_safetensors(head, prefix, extra))
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename, fsync of the folder;
/// see [`crate::atomic::write`]).
///
/// # Errors
/// [`ExportError::Io`] naming the path.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ExportError> {
    crate::atomic::write(path, bytes).map_err(|source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// A weight matrix read from a safetensors file, widened to f64.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightMatrix {
    /// The tensor's name in the file.
    pub name: String,
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Row-major values.
    pub values: Vec<f64>,
}

/// Reads a 2-D weight tensor (F32, F64, F16 or BF16) from a safetensors file.
///
/// With `name = None` the file must hold exactly one 2-D tensor whose name is `weight` or ends
/// in `.weight` (a classifier head, say `fc.weight`); otherwise name it.
///
/// # Errors
/// [`ExportError`] naming the file and what is missing or wrong.
pub fn read_weight(path: &Path, name: Option<&str>) -> Result<WeightMatrix, ExportError> {
    let bytes = read_file(path)?;
    let file = parse(path, &bytes)?;
    let name = match name {
        Some(n) => n.to_string(),
        None => {
            let mut candidates: Vec<String> = file
                .tensors()
                .into_iter()
                .filter(|(n, t)| (n == "weight" || n.ends_with(".weight")) && t.shape().len() == 2)
                .map(|(n, _)| n)
                .collect();
            candidates.sort();
            match candidates.len() {
                1 => candidates.remove(0),
                0 => {
                    return Err(content(
                        path,
                        "holds no 2-D tensor named 'weight' or '*.weight'".into(),
                    ));
                }
                _ => {
                    let names = candidates.join(", ");
                    return Err(content(
                        path,
                        format!("holds several 2-D weight tensors ({names}); name the one to use"),
                    ));
                }
            }
        }
    };
    weight_tensor(path, &file, &name)
}

fn read_file(path: &Path) -> Result<Vec<u8>, ExportError> {
    std::fs::read(path).map_err(|source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn parse<'a>(path: &Path, bytes: &'a [u8]) -> Result<SafeTensors<'a>, ExportError> {
    SafeTensors::deserialize(bytes).map_err(|source| ExportError::Format {
        path: path.to_path_buf(),
        source,
    })
}

fn content(path: &Path, what: String) -> ExportError {
    ExportError::Content {
        path: path.to_path_buf(),
        what,
    }
}

fn weight_tensor(path: &Path, file: &SafeTensors<'_>, name: &str) -> Result<WeightMatrix, ExportError> {
    let tensor = file
        .tensor(name)
        .map_err(|_| content(path, format!("has no tensor '{name}'")))?;
    let &[rows, cols] = tensor.shape() else {
        let shape = tensor.shape();
        return Err(content(
            path,
            format!("tensor '{name}' has shape {shape:?}, expected 2 dimensions"),
        ));
    };
    let data = tensor.data();
    let values: Vec<f64> = match tensor.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
            .collect(),
        Dtype::F64 => data
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f64())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f64())
            .collect(),
        other => {
            return Err(content(
                path,
                format!("tensor '{name}' has dtype {other:?}; expected F32, F64, F16 or BF16"),
            ));
        }
    };
    if let Some(pos) = values.iter().position(|v| !v.is_finite()) {
        let (row, col) = (pos / cols.max(1), pos % cols.max(1));
        return Err(content(
            path,
            format!("tensor '{name}' row {row}, column {col} is not finite"),
        ));
    }
    Ok(WeightMatrix {
        name: name.to_string(),
        rows,
        cols,
        values,
    })
}

/// A head read back from a file written by [`write_head`]: the [`Head`] (values as stored,
/// f32 widened; [`HeadInfo`] from the metadata) and every
/// `__metadata__` entry, including the caller's extras. Derefs to the [`Head`].
#[derive(Debug, Clone, PartialEq)]
pub struct StoredHead {
    /// The head.
    pub head: Head,
    /// The `__metadata__` entries.
    pub metadata: BTreeMap<String, String>,
}

impl std::ops::Deref for StoredHead {
    type Target = Head;
    fn deref(&self) -> &Head {
        &self.head
    }
}

/// How a head was solved, from the metadata [`to_safetensors`] writes.
fn info_from_metadata(path: &Path, meta: &BTreeMap<String, String>) -> Result<HeadInfo, ExportError> {
    fn field<T: std::str::FromStr>(
        path: &Path,
        meta: &BTreeMap<String, String>,
        key: &str,
    ) -> Result<T, ExportError> {
        meta.get(key)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| content(path, format!("metadata '{key}' is missing or malformed")))
    }
    Ok(HeadInfo {
        form: field(path, meta, "form")?,
        scope: field(path, meta, "scope")?,
        lambda: field(path, meta, "lambda")?,
        lambda_rule: field(path, meta, "lambda_rule")?,
        bias: field(path, meta, "bias")?,
        samples: field(path, meta, "samples")?,
        class_counts: meta
            .get("class_counts")
            .and_then(|v| serde_json::from_str(v).ok())
            .ok_or_else(|| content(path, "metadata 'class_counts' is missing or malformed".into()))?,
        expansion: meta
            .get("expansion")
            .map(|v| crate::expand::Expansion::from_json(v))
            .transpose()
            .map_err(|e| content(path, format!("metadata 'expansion': {e}")))?,
    })
}

/// Reads a head file written by [`write_head`] with the given prefix.
///
/// # Errors
/// [`ExportError`] naming the file and the missing or malformed tensor.
pub fn read_head(path: &Path, prefix: &str) -> Result<StoredHead, ExportError> {
    decode_head(&read_file(path)?, prefix, path)
}

/// Decodes a head from safetensors bytes (a server's SOLVE reply, say); `origin` names them
/// in errors.
///
/// # Errors
/// As [`read_head`].
pub fn decode_head(bytes: &[u8], prefix: &str, origin: &Path) -> Result<StoredHead, ExportError> {
    let path = origin;
    let file = parse(path, bytes)?;
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|source| ExportError::Format {
        path: path.to_path_buf(),
        source,
    })?;
    let w = weight_tensor(path, &file, &format!("{prefix}weight"))?;
    let tensor = |name: String| {
        file.tensor(&name)
            .map_err(|_| content(path, format!("has no tensor '{name}'")))
    };
    let bias = tensor(format!("{prefix}bias"))?;
    let ids = tensor(format!("{prefix}class_ids"))?;
    if bias.dtype() != Dtype::F32
        || bias.shape() != [w.rows]
        || ids.dtype() != Dtype::I64
        || ids.shape() != [w.rows]
    {
        return Err(content(
            path,
            format!("bias or class_ids do not match {} rows of F32/I64", w.rows),
        ));
    }
    let metadata: BTreeMap<String, String> =
        meta.metadata().clone().unwrap_or_default().into_iter().collect();
    let info = info_from_metadata(path, &metadata)?;
    if info.class_counts.len() != w.rows {
        return Err(content(
            path,
            format!(
                "metadata 'class_counts' has {} entries for {} rows",
                info.class_counts.len(),
                w.rows
            ),
        ));
    }
    if let Some(e) = info.expansion.filter(|e| e.features != w.cols) {
        return Err(content(
            path,
            format!(
                "metadata 'expansion' has {} features but the weight has {} columns",
                e.features, w.cols
            ),
        ));
    }
    Ok(StoredHead {
        head: Head {
            bias: bias
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
                .collect(),
            class_ids: ids
                .data()
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            weight: w.values,
            dim: w.cols,
            info,
        },
        metadata,
    })
}
