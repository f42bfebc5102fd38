//! Every odd file a real photo library holds, through `squire index`:
//! truncated JPEGs are skipped with the decoder's reason; an unreadable
//! folder is listed and skipped (never fatal) and what it held before is
//! kept; non-UTF-8 names are stored exactly, served by id and not re-embedded
//! on the next run; symlinked folders are listed, not followed; a rerun
//! reports the same skips and embeds nothing twice.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use squire_indexer::{Collection, OpenOptions};

use crate::common::{fixtures, scratch, text};

/// Runs `bin` (a copy of squire) as an unprivileged user when the tests run
/// as root (root reads every folder whatever its mode), so that a mode-000
/// folder is unreadable to it.
fn squire_unprivileged(bin: &Path, home: &Path, args: &[&str]) -> Output {
    let mut cmd = if unsafe { libc::geteuid() } == 0 {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(bin);
        c
    } else {
        Command::new(bin)
    };
    cmd.args(args)
        .env("SQUIRE_HOME", home)
        .env("SQUIRE_OFFLINE", "1")
        .output()
        .expect("run squire (setpriv from util-linux when root)")
}

fn open_to_all(p: &Path) {
    for e in std::fs::read_dir(p).expect("list") {
        let e = e.expect("entry");
        let path = e.path();
        if e.file_type().expect("type").is_dir() {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).expect("chmod");
            open_to_all(&path);
        } else if !e.file_type().expect("type").is_symlink() {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        }
    }
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777)).expect("chmod");
}

fn index_json(root: &Path, lib: &Path, idx: &str) -> (Value, String) {
    let model = root.join("tiny-clip").display().to_string();
    let o = squire_unprivileged(
        &root.join("squire"),
        &root.join("home"),
        &[
            "index",
            &lib.display().to_string(),
            "--index",
            idx,
            "--model",
            &model,
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let v: Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    (v, String::from_utf8_lossy(&o.stderr).into_owned())
}

fn skipped(v: &Value) -> Vec<(String, String)> {
    v["report"]["skipped"]
        .as_array()
        .expect("skipped")
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap_or("").to_string(),
                p[1].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[test]
fn truncated_unreadable_non_utf8_and_symlinked_files_are_handled_and_reruns_embed_nothing_twice() {
    let root = scratch("odd-files");
    let (home, lib) = (root.join("home"), root.join("library"));
    std::fs::create_dir_all(&home).expect("home");
    std::fs::create_dir_all(lib.join("good")).expect("mkdir");
    std::fs::create_dir_all(lib.join("locked")).expect("mkdir");
    let images = fixtures().join("images");
    for f in ["astronaut.jpg", "rocket-444.jpg", "grey.jpg", "alpha.png"] {
        std::fs::copy(images.join(f), lib.join("good").join(f)).expect("copy");
    }
    for f in ["coffee-progressive.jpg", "cmyk.jpg"] {
        std::fs::copy(images.join(f), lib.join("locked").join(f)).expect("copy");
    }
    let chelsea = std::fs::read(images.join("chelsea-420.jpg")).expect("read");
    std::fs::write(lib.join("cut60.jpg"), &chelsea[..chelsea.len() * 6 / 10]).expect("write");
    std::fs::write(lib.join("cut3000.jpg"), &chelsea[..3000]).expect("write");
    // Two names that are not UTF-8 and read the same when made lossy.
    let latin1: Vec<PathBuf> = [b"caf\xe9.jpg".as_slice(), b"caf\xe8.jpg".as_slice()]
        .iter()
        .map(|n| lib.join(std::ffi::OsStr::from_bytes(n)))
        .collect();
    std::fs::copy(images.join("chelsea-420.jpg"), &latin1[0]).expect("copy");
    std::fs::copy(images.join("palette.gif"), &latin1[1]).expect("copy");
    std::os::unix::fs::symlink(lib.join("good"), lib.join("link")).expect("symlink");
    // The binary and the model, copied where the unprivileged user can read
    // them whatever the checkout's permissions.
    std::fs::copy(env!("CARGO_BIN_EXE_squire"), root.join("squire")).expect("copy squire");
    std::fs::create_dir_all(root.join("tiny-clip")).expect("mkdir");
    for e in std::fs::read_dir(fixtures().join("tiny-clip")).expect("model") {
        let p = e.expect("entry").path();
        if p.is_file() {
            std::fs::copy(
                &p,
                root.join("tiny-clip").join(p.file_name().expect("name")),
            )
            .expect("copy model");
        }
    }
    open_to_all(&root);
    std::fs::set_permissions(root.join("squire"), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    let idx = root.join("index").display().to_string();
    let locked = lib.join("locked");
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).expect("chmod");

    // First run: the intact files, nothing from `locked`, the cut JPEGs skipped with the reason.
    let (v, err) = index_json(&root, &lib, &idx);
    assert_eq!(v["report"]["added"], 6, "{v}\n{err}");
    let mut skips = skipped(&v);
    skips.sort();
    assert_eq!(
        skips.iter().map(|s| s.0.as_str()).collect::<Vec<_>>(),
        ["cut3000.jpg", "cut60.jpg"],
        "{v}"
    );
    for (f, why) in &skips {
        assert!(why.contains("truncated"), "{f}: {why}");
    }
    assert_eq!(v["report"]["unreadable"][0][0], "locked", "{v}");
    assert!(
        v["report"]["unreadable"][0][1]
            .as_str()
            .unwrap_or("")
            .contains("Permission denied"),
        "{v}"
    );
    assert!(
        err.contains("could not read 1 folder(s) or file(s)")
            && err.contains("locked: Permission denied"),
        "{err}"
    );
    assert_eq!(
        v["report"]["symlinked_folders"],
        serde_json::json!(["link"]),
        "{v}"
    );
    assert!(
        err.contains("1 symlinked folder(s) not followed") && err.contains("cut60.jpg"),
        "{err}"
    );

    // The same run again: the same skips, nothing embedded.
    let (again, _) = index_json(&root, &lib, &idx);
    for field in ["added", "updated", "removed"] {
        assert_eq!(again["report"][field], 0, "{field}: {again}");
    }
    assert_eq!(again["report"]["unchanged"], 6);
    assert_eq!(again["report"]["skipped"], v["report"]["skipped"]);
    assert_eq!(again["report"]["unreadable"], v["report"]["unreadable"]);

    // Readable again: its two photos come in; unreadable again: they are kept.
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let (opened, _) = index_json(&root, &lib, &idx);
    assert_eq!(
        (
            opened["report"]["added"].as_u64(),
            opened["images"].as_u64()
        ),
        (Some(2), Some(8)),
        "{opened}"
    );
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).expect("chmod");
    let (closed, _) = index_json(&root, &lib, &idx);
    assert_eq!(
        (
            closed["report"]["removed"].as_u64(),
            closed["images"].as_u64()
        ),
        (Some(0), Some(8)),
        "{closed}"
    );
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o777)).expect("chmod");

    // The non-UTF-8 names: two records, shown with \xHH, each finding its own file.
    let col = Collection::open_with(Path::new(&idx), OpenOptions { view: true }).expect("open");
    let mut shown: Vec<&str> = col
        .records()
        .iter()
        .map(|r| r.path.as_str())
        .filter(|p| p.starts_with("caf"))
        .collect();
    shown.sort();
    assert_eq!(shown, ["caf\\xE8.jpg", "caf\\xE9.jpg"]);
    let mut ids = Vec::new();
    for (file, name) in latin1.iter().zip(["caf\\xE9.jpg", "caf\\xE8.jpg"]) {
        let r = col
            .records()
            .iter()
            .find(|r| r.path == name)
            .expect("record");
        assert_eq!(lib.join(r.relative_path()), *file);
        ids.push((format!("{:016x}", r.id), std::fs::read(file).expect("read")));
    }
    assert_ne!(ids[0].0, ids[1].0);
    // Served by id, byte for byte.
    let srv = crate::serve_api::serve_collection(
        &idx,
        lib.clone(),
        squire_demo_ui::ServerConfig::default(),
        None,
    );
    for (id, bytes) in &ids {
        let resp = ureq::get(&format!("{}/api/images/{id}", srv.base))
            .call()
            .expect("GET image");
        let mut got = Vec::new();
        std::io::Read::read_to_end(&mut resp.into_reader(), &mut got).expect("body");
        assert_eq!(&got, bytes, "image {id}");
    }
    drop(srv);
    let _ = std::fs::remove_dir_all(&root);
}

/// A tmpfs of `kib` KiB at `dir`, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `None` (or a failure when CI sets SQUIRE_REQUIRE_MOUNT=1) where mounting is not allowed.
    fn mount(dir: &Path, kib: usize) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).expect("mkdir");
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
            .arg(dir)
            .output();
        match o {
            Ok(o) if o.status.success() => Some(Tmpfs(dir.to_path_buf())),
            other => {
                let why = format!("{other:?}");
                assert!(
                    std::env::var("SQUIRE_REQUIRE_MOUNT").as_deref() != Ok("1"),
                    "cannot mount a small tmpfs for the full-disk test: {why}"
                );
                eprintln!("skipping the full-disk test: cannot mount a tmpfs here ({why})");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).output();
    }
}

#[test]
fn a_full_disk_is_reported_with_the_path_and_leaves_the_collection_as_it_was() {
    let root = scratch("disk-full");
    let (home, lib) = (root.join("home"), root.join("library"));
    std::fs::create_dir_all(&lib).expect("mkdir");
    for e in std::fs::read_dir(fixtures().join("images")).expect("fixtures") {
        let p = e.expect("entry").path();
        std::fs::copy(&p, lib.join(p.file_name().expect("name"))).expect("copy");
    }
    // 10 images fit in 96 KiB; 1,010 do not.
    let Some(disk) = Tmpfs::mount(&root.join("disk"), 96) else {
        return;
    };
    let idx = disk.0.join("index");
    let idx_s = idx.display().to_string();
    let model = fixtures().join("tiny-clip").display().to_string();
    let run = || {
        crate::common::squire(
            &home,
            &[
                "index",
                &lib.display().to_string(),
                "--index",
                &idx_s,
                "--model",
                &model,
            ],
        )
    };
    let o = run();
    assert!(o.status.success(), "{}", text(&o));
    crate::cli_filter::make_library(&lib.join("more"));
    let o = run();
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains("No space left on device")
            && t.contains(&idx_s)
            && t.contains("the disk is full"),
        "{t}"
    );
    assert_eq!(
        t.matches("No space left on device").count(),
        1,
        "said once: {t}"
    );
    // Nothing partial is left, and the collection is whole and searchable.
    let left: Vec<String> = std::fs::read_dir(&idx)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.iter().all(|n| !n.ends_with(".tmp")), "{left:?}");
    let o = crate::common::squire(&home, &["verify", "--index", &idx_s, "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = crate::common::squire(
        &home,
        &["search", "--index", &idx_s, "--text", "a rocket", "--json"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["store"]["images"], 10, "{v}");
    drop(disk);
    let _ = std::fs::remove_dir_all(&root);
}
