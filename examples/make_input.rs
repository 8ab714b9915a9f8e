//! Writes one seeded labelled data set in every input format `headstart fit` reads, for the
//! throughput and memory figures of docs/benchmarks.md ("Parquet and safetensors input"):
//!
//!     cargo run --release --example make_input -- OUT_DIR ROWS DIM [ROW_GROUP_ROWS [FORMATS]]
//!
//! OUT_DIR gets `x.npy` and `y.npy` (float32, int64), `plain.parquet` and `snappy.parquet`
//! (columns `emb`: FixedSizeList<Float32>[DIM], `label`: Int32; row groups of ROW_GROUP_ROWS,
//! default 16384, written 4096 rows at a time), and `x.safetensors` (tensors `x` [ROWS, DIM]
//! F32 and `y` [ROWS] I64). FORMATS (default `npy,parquet,safetensors`) limits what is written.
//! Features are uniform in [-1, 1) around one of 100 class centres.

use std::path::Path;
use std::sync::Arc;

use arrow_array::{ArrayRef, FixedSizeListArray, Float32Array, Int32Array, RecordBatch};
use arrow_schema::{DataType, Field};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        return Err("usage: make_input OUT_DIR ROWS DIM [ROW_GROUP_ROWS [FORMATS]]".into());
    }
    let out = Path::new(&args[0]);
    let (rows, dim): (usize, usize) = (args[1].parse()?, args[2].parse()?);
    let group: usize = args.get(3).map_or(Ok(16_384), |g| g.parse())?;
    let formats = args.get(4).map_or("npy,parquet,safetensors", String::as_str);
    let wanted = |f: &str| formats.split(',').any(|w| w == f);
    std::fs::create_dir_all(out)?;

    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let centres: Vec<f32> = (0..100 * dim).map(|_| rng.random_range(-2.0..2.0)).collect();
    let mut x = Vec::with_capacity(rows * dim);
    let mut y = Vec::with_capacity(rows);
    for _ in 0..rows {
        let k = rng.random_range(0..100usize);
        y.push(k as i64);
        x.extend((0..dim).map(|j| centres[k * dim + j] + rng.random_range(-1.0f32..1.0)));
    }
    if wanted("npy") {
        headstart::ingest::npy::write_f32(&out.join("x.npy"), &x, rows, dim)?;
        headstart::ingest::npy::write_i64(&out.join("y.npy"), &y)?;
    }

    let parquet = if wanted("parquet") { 2 } else { 0 };
    for (name, compression) in [
        ("plain", Compression::UNCOMPRESSED),
        ("snappy", Compression::SNAPPY),
    ]
    .into_iter()
    .take(parquet)
    {
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(group))
            .set_compression(compression)
            .build();
        let item = Arc::new(Field::new("item", DataType::Float32, true));
        let mut writer: Option<ArrowWriter<std::fs::File>> = None;
        for (xs, ys) in x.chunks(4096 * dim).zip(y.chunks(4096)) {
            let values = Arc::new(Float32Array::from(xs.to_vec()));
            let emb: ArrayRef = Arc::new(FixedSizeListArray::try_new(
                item.clone(),
                dim as i32,
                values,
                None,
            )?);
            let label: ArrayRef =
                Arc::new(Int32Array::from(ys.iter().map(|&v| v as i32).collect::<Vec<_>>()));
            let batch = RecordBatch::try_from_iter([("emb", emb), ("label", label)])?;
            if writer.is_none() {
                let file = std::fs::File::create(out.join(format!("{name}.parquet")))?;
                writer = Some(ArrowWriter::try_new(file, batch.schema(), Some(props.clone()))?);
            }
            writer.as_mut().expect("created").write(&batch)?;
        }
        if let Some(w) = writer {
            w.close()?;
        }
    }

    if !wanted("safetensors") {
        println!("wrote {rows} rows × {dim} to {}", out.display());
        return Ok(());
    }
    let xb: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    let yb: Vec<u8> = y.iter().flat_map(|v| v.to_le_bytes()).collect();
    let tensors = [
        (
            "x",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![rows, dim], &xb)?,
        ),
        (
            "y",
            safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![rows], &yb)?,
        ),
    ];
    safetensors::serialize_to_file(tensors, None, &out.join("x.safetensors"))?;
    println!("wrote {rows} rows × {dim} to {}", out.display());
    Ok(())
}
