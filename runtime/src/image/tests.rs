use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::sync::atomic::{AtomicUsize, Ordering};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::*;
use crate::busybox::write_oci_layout;

/// A scratch directory under the system temp dir, removed with its contents on drop.
struct TestDir(PathBuf);

impl TestDir {
    fn new(name: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("minipod-image-test-{name}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TestDir(dir)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Unpacking whiteouts needs mknod and trusted.* xattrs: without root the test fails
/// saying so, rather than passing having checked nothing.
fn need_root(test: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "{test} needs root (mknod, trusted.* xattrs): run the suite as root, as the README's test command does"
    );
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let name = std::ffi::CString::new(name).unwrap();
    let mut buf = [0u8; 64];
    // SAFETY: both strings are NUL-terminated and buf is writable for its length.
    let n = unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (n >= 0).then(|| buf[..n as usize].to_vec())
}

/// The manifest of the (single) image in a layout, as `write_oci_layout` writes it.
fn manifest_of(layout: &Path) -> (ImageManifest, String) {
    let index: ImageIndex = serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let desc = &index.manifests()[0];
    let data = fs::read(layout.join("blobs/sha256").join(desc.as_digest_sha256().unwrap())).unwrap();
    (serde_json::from_slice(&data).unwrap(), desc.digest().to_string())
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[test]
fn references_normalise_as_containerd_shows_them() {
    let n = |r: &str| normalize_reference(r).unwrap();
    assert_eq!(n("busybox"), "docker.io/library/busybox:latest");
    assert_eq!(n("busybox:1.36"), "docker.io/library/busybox:1.36");
    assert_eq!(n("foo/bar:1"), "docker.io/foo/bar:1");
    assert_eq!(n("localhost:5000/x"), "localhost:5000/x:latest");
    assert_eq!(n("localhost/x"), "localhost/x:latest");
    assert_eq!(n("quay.io/a/b/c:v1.0-rc_1"), "quay.io/a/b/c:v1.0-rc_1");
    assert_eq!(n("index.docker.io/library/busybox"), "docker.io/library/busybox:latest");
    assert_eq!(n("docker.io/library/busybox:latest"), "docker.io/library/busybox:latest");
    let digest = format!("sha256:{}", "ab".repeat(32));
    assert_eq!(n(&format!("busybox@{digest}")), format!("docker.io/library/busybox@{digest}"));
    assert_eq!(n(&format!("r.io:443/x:1@{digest}")), format!("r.io:443/x:1@{digest}"));
    for bad in ["", "Busybox", "busy box", "a//b", "/a", "a/", "busybox:", "busybox:-x", "busybox@sha256:abc", "host:port/x", "-a/b"] {
        match normalize_reference(bad) {
            Err(ImageError::BadReference { reference, .. }) => assert_eq!(reference, bad),
            other => panic!("{bad:?} gave {other:?}"),
        }
    }
    let upper = normalize_reference("docker.io/Library/busybox").unwrap_err().to_string();
    assert!(upper.contains("must be lowercase"), "{upper}");
    // The grammar takes sha512 digests; the store verifies sha256 only.
    assert!(normalize_reference(&format!("busybox@sha512:{}", "ab".repeat(64))).is_err());
}

/// The hand-written grammar takes and normalises what `oci_spec`'s regex does, on every
/// combination of the parts below, but for tags beyond ASCII (Go's `\w` is ASCII).
#[test]
fn the_grammar_by_hand_agrees_with_the_distribution_regex() {
    let hex = "ab".repeat(32);
    let long = "a".repeat(256);
    let registries = [
        "",
        "localhost/",
        "localhost:5000/",
        "r.io/",
        "r.io:443/",
        "a-b.c/",
        "-a.io/",
        "a..b/",
        "host:port/",
        "UP.io/",
        "a_b.io/",
        "r.io:/",
    ];
    let paths =
        ["busybox", "a/b/c", "a__b", "a___b", "a--b", "a.b", "a._b", "A", "a/", "/a", "a//b", "my_org/app", "x-", "0", "a/B", &long];
    let long_tag = format!(":{}", "a".repeat(128));
    let too_long_tag = format!(":{}", "a".repeat(129));
    let tags = ["", ":1", ":v1.0-rc_1", ":-x", ":", ":_", ":.x", ":A-Z", &long_tag, &too_long_tag];
    let digests = [
        String::new(),
        format!("@sha256:{hex}"),
        format!("@sha256:{}", hex.to_uppercase()),
        "@sha256:abc".into(),
        format!("@sha512:{hex}{hex}"),
        format!("@Sha+x.y:{hex}"),
        format!("@:{hex}"),
        format!("@1a:{hex}"),
        format!("@sha256:{hex}@x"),
    ];
    let mut compared = 0;
    for r in registries {
        for p in paths {
            for t in tags {
                for d in &digests {
                    let s = format!("{r}{p}{t}{d}");
                    let theirs = oci_client::Reference::try_from(s.as_str())
                        .ok()
                        .filter(|o| o.digest().is_none_or(|d| d.strip_prefix("sha256:").is_some_and(|h| h.len() == 64 && is_hex(h))))
                        .map(|o| o.to_string());
                    assert_eq!(normalize_reference(&s).ok(), theirs, "{s}");
                    compared += 1;
                }
            }
        }
    }
    assert_eq!(compared, 12 * 16 * 10 * 9);
    assert!(oci_client::Reference::try_from("busybox:\u{e9}").is_ok() && normalize_reference("busybox:\u{e9}").is_err());
}

#[test]
fn docker_save_archive_is_refused_with_the_skopeo_way_out() {
    let dir = TestDir::new("docker-save");
    let store = ImageStore::open(dir.0.join("store")).unwrap();
    let save = dir.0.join("save");
    fs::create_dir_all(&save).unwrap();
    fs::write(save.join("manifest.json"), "[]").unwrap();
    let err = store.import(&save, None).unwrap_err();
    assert!(matches!(err, ImageError::NotALayout { .. }), "{err:?}");
    assert!(err.to_string().contains("skopeo copy docker-archive:"), "{err}");
    assert!(matches!(store.get("busybox"), Err(ImageError::NotFound { .. })));
}

#[test]
fn imported_layout_is_unpacked_for_overlayfs_and_found_by_tag_and_id() {
    need_root("imported_layout_is_unpacked_for_overlayfs_and_found_by_tag_and_id");
    let dir = TestDir::new("import");
    let layout = dir.0.join("layout");
    write_oci_layout(&layout, "minipod.test/busybox:1.0").unwrap();
    let store = ImageStore::open(dir.0.join("store")).unwrap();

    let image = store.import(&layout, None).unwrap();
    assert_eq!(image.repo_tags, ["minipod.test/busybox:1.0"]);
    let (manifest, manifest_digest) = manifest_of(&layout);
    assert_eq!(image.repo_digests, [format!("minipod.test/busybox@{manifest_digest}")]);
    assert_eq!(image.layers.len(), 2);
    assert_eq!(image.id, manifest.config().digest().to_string());
    assert_eq!(image.size, manifest.layers().iter().map(|d| d.size()).sum::<u64>());
    assert_eq!(image.config.cmd, ["sh"]);
    assert_eq!(image.config.working_dir.as_deref(), Some("/"));

    let lower = store.lower_dirs(&image);
    let layer_dir = |digest: &str| store.dir().join("layers").join(digest.trim_start_matches("sha256:"));
    assert_eq!(lower, [layer_dir(&image.layers[1]), layer_dir(&image.layers[0])], "top layer first");
    let (top, base) = (&lower[0], &lower[1]);
    let motd = fs::symlink_metadata(top.join("etc/motd")).unwrap();
    assert!(motd.file_type().is_char_device() && motd.rdev() == 0, "etc/motd is a 0:0 whiteout");
    assert_eq!(xattr(&top.join("opt/gone"), "trusted.overlay.opaque").as_deref(), Some(&b"y"[..]));
    assert!(!top.join("etc/.wh.motd").exists() && !top.join("opt/gone/.wh..wh..opq").exists());
    assert_eq!(fs::read_to_string(top.join("etc/image-release")).unwrap(), "minipod test image\n");
    assert!(base.join("bin/busybox").is_file() && base.join("opt/gone/old").is_file());
    assert_eq!(fs::symlink_metadata(base.join("bin/busybox")).unwrap().uid(), 0);

    assert_eq!(store.get("minipod.test/busybox:1.0").unwrap(), image);
    assert_eq!(store.get(&image.id).unwrap(), image);
    let hex = image.id.trim_start_matches("sha256:");
    assert_eq!(store.get(hex).unwrap(), image);
    assert_eq!(store.get(&hex[..12]).unwrap(), image);
    assert!(matches!(store.get(&hex[..11]), Err(ImageError::NotFound { .. })));
    assert!(matches!(store.get("minipod.test/busybox:2.0"), Err(ImageError::NotFound { .. })));

    // A second import finds both layers in place and unpacks nothing.
    let inodes = |dirs: &[PathBuf]| dirs.iter().map(|d| fs::metadata(d).unwrap().ino()).collect::<Vec<_>>();
    let before = inodes(&lower);
    let again = store.import(&layout, Some("busybox:again")).unwrap();
    assert_eq!(again.id, image.id);
    assert_eq!(store.lower_dirs(&again), lower);
    assert_eq!(inodes(&lower), before);
    assert_eq!(again.repo_tags, ["minipod.test/busybox:1.0", "docker.io/library/busybox:again"]);
    assert_eq!(store.list().unwrap(), std::slice::from_ref(&again));

    // Removing one tag keeps the image; removing the last deletes it and its layers.
    store.remove("busybox:again").unwrap();
    assert_eq!(store.get(&image.id).unwrap().repo_tags, ["minipod.test/busybox:1.0"]);
    store.remove("minipod.test/busybox:1.0").unwrap();
    assert!(matches!(store.get(&image.id), Err(ImageError::NotFound { .. })));
    assert!(store.list().unwrap().is_empty());
    assert!(names_in(&store.dir().join("layers")).is_empty());
    assert!(names_in(&store.dir().join("images")).is_empty());
}

#[test]
fn tampered_layer_blob_is_refused_and_leaves_nothing_behind() {
    need_root("tampered_layer_blob_is_refused_and_leaves_nothing_behind");
    let dir = TestDir::new("tamper");
    let layout = dir.0.join("layout");
    write_oci_layout(&layout, "minipod.test/busybox:tampered").unwrap();
    let (manifest, _) = manifest_of(&layout);
    let store = ImageStore::open(dir.0.join("store")).unwrap();

    for layer in manifest.layers() {
        let blob = layout.join("blobs/sha256").join(layer.as_digest_sha256().unwrap());
        let mut data = fs::read(&blob).unwrap();
        let middle = data.len() / 2;
        data[middle] ^= 0x20;
        fs::write(&blob, &data).unwrap();
        match store.import(&layout, None) {
            Err(ImageError::DigestMismatch { digest, actual }) => {
                assert_eq!(digest, layer.digest().to_string());
                assert_ne!(actual, digest);
            }
            other => panic!("a flipped byte in layer {} gave {other:?}", layer.digest()),
        }
        data[middle] ^= 0x20;
        fs::write(&blob, &data).unwrap();
        // Layers before the tampered one may stay for the next try, but no half-unpacked one.
        assert!(names_in(&store.dir().join("layers")).iter().all(|n| !n.starts_with('.')), "a tmp dir was left");
        assert!(names_in(&store.dir().join("images")).is_empty());
        assert!(names_in(&store.dir().join("tmp")).is_empty());
    }
    assert_eq!(store.import(&layout, None).unwrap().layers.len(), 2);
}

#[test]
fn gzipped_archive_of_a_layout_imports_and_leaves_no_scratch() {
    need_root("gzipped_archive_of_a_layout_imports_and_leaves_no_scratch");
    let dir = TestDir::new("archive");
    let layout = dir.0.join("layout");
    write_oci_layout(&layout, "minipod.test/busybox:archived").unwrap();
    let archive = dir.0.join("image.tar.gz");
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(File::create(&archive).unwrap(), flate2::Compression::fast()));
    tar.append_dir_all(".", &layout).unwrap();
    tar.into_inner().unwrap().finish().unwrap();
    let store = ImageStore::open(dir.0.join("store")).unwrap();

    let image = store.import(&archive, Some("localhost:5000/bb")).unwrap();
    assert_eq!(image.repo_tags, ["localhost:5000/bb:latest"]);
    assert!(store.lower_dirs(&image).iter().all(|d| d.is_dir()));
    assert!(names_in(&store.dir().join("tmp")).is_empty());

    let err = store.import(&dir.0.join("layout/oci-layout"), None).unwrap_err();
    assert!(matches!(err, ImageError::NotALayout { .. }), "{err:?}");
    assert!(names_in(&store.dir().join("tmp")).is_empty());
}

#[test]
fn moving_a_tag_deletes_the_image_it_leaves_but_not_shared_layers() {
    need_root("moving_a_tag_deletes_the_image_it_leaves_but_not_shared_layers");
    let dir = TestDir::new("tag-move");
    let layout = dir.0.join("layout");
    write_oci_layout(&layout, "minipod.test/busybox:moving").unwrap();
    let store = ImageStore::open(dir.0.join("store")).unwrap();
    let old = store.import(&layout, None).unwrap();

    // The same layers under another config: a different image.
    let (manifest, _) = manifest_of(&layout);
    let mut config: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("blobs/sha256").join(manifest.config().as_digest_sha256().unwrap())).unwrap())
            .unwrap();
    config["config"]["Cmd"] = serde_json::json!(["echo", "new"]);
    let config = serde_json::to_vec(&config).unwrap();
    let mut new_manifest = manifest.clone();
    let config_digest: oci_spec::image::Digest = sha256_digest(&config).parse().unwrap();
    new_manifest.set_config(Descriptor::new(oci_spec::image::MediaType::ImageConfig, config.len() as u64, config_digest));
    let new_manifest_digest = sha256_digest(&serde_json::to_vec(&new_manifest).unwrap());
    let mut open_blob = |d: &Descriptor| -> Result<Box<dyn Read>, ImageError> {
        Ok(Box::new(File::open(layout.join("blobs/sha256").join(d.as_digest_sha256().unwrap())).unwrap()))
    };

    let new = store.add(&new_manifest, &new_manifest_digest, &config, &mut open_blob, Some("minipod.test/busybox:moving")).unwrap();
    assert_ne!(new.id, old.id);
    assert_eq!(new.config.cmd, ["echo", "new"]);
    assert_eq!(store.get("minipod.test/busybox:moving").unwrap(), new);
    assert!(matches!(store.get(&old.id), Err(ImageError::NotFound { .. })), "the untagged old image is deleted");
    assert!(store.lower_dirs(&new).iter().all(|d| d.is_dir()), "its layers are the new image's too");

    let wrong = format!("minipod.test/busybox@sha256:{}", "0".repeat(64));
    let err = store.add(&new_manifest, &new_manifest_digest, &config, &mut open_blob, Some(&wrong)).unwrap_err();
    assert!(matches!(err, ImageError::BadReference { .. }), "{err:?}");
    let by_digest = format!("minipod.test/busybox@{new_manifest_digest}");
    assert_eq!(store.get(&by_digest).unwrap(), new);
    store.remove(&by_digest).unwrap();
    assert!(store.list().unwrap().is_empty());
    assert!(names_in(&store.dir().join("layers")).is_empty());
}

#[test]
fn written_layout_has_the_diff_ids_of_its_uncompressed_layers() {
    let dir = TestDir::new("diff-ids");
    let layout = dir.0.join("layout");
    write_oci_layout(&layout, "minipod.test/busybox:ids").expect("a busybox OCI layout (apt-get install busybox-static)");
    let (manifest, _) = manifest_of(&layout);
    let blob = |d: &Descriptor| fs::read(layout.join("blobs/sha256").join(d.as_digest_sha256().unwrap())).unwrap();
    let config: ImageConfiguration = serde_json::from_slice(&blob(manifest.config())).unwrap();
    let mut base = vec![];
    flate2::read::GzDecoder::new(&blob(&manifest.layers()[0])[..]).read_to_end(&mut base).unwrap();
    assert_eq!(config.rootfs().diff_ids(), &[sha256_digest(&base), sha256_digest(&blob(&manifest.layers()[1]))]);
    assert_eq!(*config.architecture(), Arch::default());
    // Written twice, the layout holds the same blobs: its digests are reproducible.
    write_oci_layout(&dir.0.join("again"), "minipod.test/busybox:ids").unwrap();
    assert_eq!(manifest_of(&dir.0.join("again")).0, manifest);
}

#[test]
fn id_prefix_must_be_unique_and_at_least_12_digits() {
    let dir = TestDir::new("prefix");
    let store = ImageStore::open(dir.0.join("store")).unwrap();
    let record = |hex: &str| Image {
        id: format!("sha256:{hex}"),
        repo_tags: vec![],
        repo_digests: vec![],
        layers: vec![],
        size: 0,
        config: ImageConfig::default(),
    };
    let (a, b) = (format!("{}{}", "a".repeat(12), "0".repeat(52)), format!("{}{}", "a".repeat(12), "1".repeat(52)));
    store.write_record(&record(&a)).unwrap();
    store.write_record(&record(&b)).unwrap();
    match store.get(&"a".repeat(12)) {
        Err(ImageError::Ambiguous { ids, .. }) => assert_eq!(ids, [format!("sha256:{a}"), format!("sha256:{b}")]),
        other => panic!("{other:?}"),
    }
    assert_eq!(store.get(&a[..13]).unwrap().id, format!("sha256:{a}"));
    assert_eq!(store.get(&format!("sha256:{}", &b[..13])).unwrap().id, format!("sha256:{b}"));
    assert!(matches!(store.get("sha256:aaaa"), Err(ImageError::BadReference { .. })));
    store.remove(&a).unwrap();
    assert_eq!(store.list().unwrap(), [record(&b)]);
}

#[test]
fn whiteouts_and_files_never_reach_through_a_symlink() {
    need_root("whiteouts_and_files_never_reach_through_a_symlink");
    let dir = TestDir::new("escape");
    let victim = dir.0.join("victim");
    fs::create_dir_all(victim.join("sub")).unwrap();
    fs::write(victim.join("keep"), "host file").unwrap();
    let layers = dir.0.join("layers");
    fs::create_dir(&layers).unwrap();

    for (evil, expect_bad_layer) in [("evil/.wh.keep", true), ("evil/sub/.wh..wh..opq", true), ("evil/keep", false)] {
        let header = |kind, size| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_size(size);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h
        };
        let mut tar = tar::Builder::new(Vec::new());
        tar.append_link(&mut header(tar::EntryType::Symlink, 0), "evil", &victim).unwrap();
        tar.append_data(&mut header(tar::EntryType::Regular, 1), evil, &b"x"[..]).unwrap();
        let blob = tar.into_inner().unwrap();
        let digest: oci_spec::image::Digest = sha256_digest(&blob).parse().unwrap();
        let desc = Descriptor::new(oci_spec::image::MediaType::ImageLayer, blob.len() as u64, digest);

        let err = layer::unpack(&layers, &desc, Box::new(io::Cursor::new(blob))).unwrap_err();
        assert_eq!(matches!(err, ImageError::BadLayer { .. }), expect_bad_layer, "{evil}: {err:?}");
        assert_eq!(fs::read_to_string(victim.join("keep")).unwrap(), "host file", "{evil}");
        assert_eq!(xattr(&victim.join("sub"), "trusted.overlay.opaque"), None, "{evil}");
        assert!(names_in(&layers).is_empty(), "{evil}: the tmp dir is removed");
    }
}

#[test]
fn layout_named_only_by_a_tag_is_stored_untagged() {
    need_root("layout_named_only_by_a_tag_is_stored_untagged");
    let dir = TestDir::new("bare-tag");
    let layout = dir.0.join("layout");
    write_oci_layout(&layout, "1.0").unwrap();
    let store = ImageStore::open(dir.0.join("store")).unwrap();
    let image = store.import(&layout, None).unwrap();
    assert!(image.repo_tags.is_empty() && image.repo_digests.is_empty());
    assert_eq!(store.get(&image.id).unwrap(), image);
}

#[test]
fn concurrent_imports_into_one_store_both_land() {
    need_root("concurrent_imports_into_one_store_both_land");
    let dir = TestDir::new("concurrent");
    let layout = dir.0.join("layout");
    write_oci_layout(&layout, "minipod.test/busybox:concurrent").unwrap();
    let store_dir = dir.0.join("store");
    let imports: Vec<_> = ["one", "two"]
        .map(|tag| {
            let (layout, store_dir) = (layout.clone(), store_dir.clone());
            std::thread::spawn(move || ImageStore::open(store_dir).unwrap().import(&layout, Some(&format!("busybox:{tag}"))).unwrap())
        })
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    let store = ImageStore::open(store_dir).unwrap();
    let mut tags = store.get(&imports[0].id).unwrap().repo_tags;
    tags.sort();
    assert_eq!(tags, ["docker.io/library/busybox:one", "docker.io/library/busybox:two"]);
    assert_eq!(names_in(&store.dir().join("layers")).len(), 2);
}

#[test]
fn overlay_of_lower_dirs_shows_the_image_with_whiteouts_applied() {
    need_root("overlay_of_lower_dirs_shows_the_image_with_whiteouts_applied");
    let dir = TestDir::new("overlay");
    let layout = dir.0.join("layout");
    write_oci_layout(&layout, "minipod.test/busybox:overlay").unwrap();
    let store = ImageStore::open(dir.0.join("store")).unwrap();
    let image = store.import(&layout, None).unwrap();

    let (upper, work, merged) = (dir.0.join("upper"), dir.0.join("work"), dir.0.join("merged"));
    for d in [&upper, &work, &merged] {
        fs::create_dir(d).unwrap();
    }
    let lower = store.lower_dirs(&image).iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(":");
    let data = format!("lowerdir={lower},upperdir={},workdir={}", upper.display(), work.display());
    mount(Some("overlay"), &merged, Some("overlay"), MsFlags::empty(), Some(data.as_str())).unwrap();
    /// Unmounts even when an assertion fails, so the TestDir can go.
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = umount2(self.0, MntFlags::MNT_DETACH);
        }
    }
    let _unmount = Unmount(&merged);

    assert!(fs::symlink_metadata(merged.join("etc/motd")).is_err(), "etc/motd is whited out");
    assert_eq!(names_in(&merged.join("opt/gone")), ["new"]);
    assert!(merged.join("bin/busybox").is_file());
    assert_eq!(fs::read_to_string(merged.join("etc/image-release")).unwrap(), "minipod test image\n");
    assert!(merged.join("etc/passwd").is_file());
}
