//! Real NBD clients as oracles: nbdinfo, qemu-io, nbdcopy and fio against
//! the server. A missing tool fails the test (scripts/test.sh installs
//! them: libnbd-bin, qemu-utils, fio).

mod common;

use std::sync::Arc;

use common::*;
use nbd_server::{ExportConfig, MemoryExport};

/// "data": 256 KiB of data then 768 KiB of holes then 64 KiB of data;
/// "ro": read-only; "bad": reads of 4 KiB at 64 KiB fail.
fn exports() -> (Arc<MemoryExport>, Vec<ExportConfig>) {
    let mut content = pattern(1088 * 1024, 21);
    content[256 * 1024..1024 * 1024].fill(0);
    let data = Arc::new(MemoryExport::from_bytes(&content));
    let ro = Arc::new(MemoryExport::from_bytes(&pattern(64 * 1024, 1)).read_only());
    let bad = Arc::new(MemoryExport::from_bytes(&pattern(1 << 20, 2)).poisoned(65536..69632));
    let configs = vec![
        ExportConfig {
            name: "data".into(),
            description: "holes and data".into(),
            export: data.clone(),
        },
        ExportConfig::new("ro", ro),
        ExportConfig::new("bad", bad),
    ];
    (data, configs)
}

#[test]
fn nbdinfo_sees_exports_flags_and_map() {
    let (_, configs) = exports();
    let srv = TestServer::start(configs);

    let json = tool_ok("nbdinfo", ["--json", &srv.uri("data")]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("nbdinfo JSON");
    assert_eq!(v["protocol"], "newstyle-fixed");
    assert_eq!(v["structured"], true);
    let e = &v["exports"][0];
    assert_eq!(e["export-name"], "data");
    assert_eq!(e["description"], "holes and data");
    assert_eq!(e["export-size"], 1088 * 1024);
    assert_eq!(e["is_read_only"], false);
    for flag in [
        "can_flush",
        "can_fua",
        "can_trim",
        "can_zero",
        "can_fast_zero",
        "can_cache",
        "can_df",
        "can_multi_conn",
    ] {
        assert_eq!(e[flag], true, "{flag}");
    }
    assert_eq!(e["block_size_minimum"], 1);
    assert_eq!(e["block_size_preferred"], 4096);
    assert_eq!(e["block_size_maximum"], 32 * 1024 * 1024);
    assert_eq!(e["contexts"][0], "base:allocation");

    let json = tool_ok("nbdinfo", ["--json", &srv.uri("ro")]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("nbdinfo JSON");
    assert_eq!(v["exports"][0]["is_read_only"], true);

    // The default export (no name) is the first one.
    let size = tool_ok("nbdinfo", ["--size", &srv.uri("")]);
    assert_eq!(size.trim(), (1088 * 1024).to_string());

    let list = tool_ok("nbdinfo", ["--list", "--json", &srv.uri("")]);
    let v: serde_json::Value = serde_json::from_str(&list).expect("nbdinfo JSON");
    let names: Vec<&str> = v["exports"]
        .as_array()
        .expect("exports")
        .iter()
        .map(|e| e["export-name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["data", "ro", "bad"]);

    let map = tool_ok("nbdinfo", ["--map", &srv.uri("data")]);
    let rows: Vec<Vec<&str>> = map
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        vec![
            vec!["0", "262144", "0", "data"],
            vec!["262144", "786432", "3", "hole,zero"],
            vec!["1048576", "65536", "0", "data"],
        ]
    );
    srv.stop().expect("clean stop");
}

#[test]
fn qemu_io_writes_and_reads_patterns() {
    let (data, configs) = exports();
    let srv = TestServer::start(configs);
    let target = srv.uri("data");
    let out = tool_ok(
        "qemu-io",
        [
            "-f",
            "raw",
            "-c",
            "write -P 0xab 300k 200k",
            "-c",
            "write -z 0 64k",
            "-c",
            "read -P 0xab 300k 200k",
            "-c",
            "read -P 0 0 64k",
            "-c",
            "read -P 0 600k 100k",
            "-c",
            "discard 300k 4k",
            "-c",
            "flush",
            &target,
        ],
    );
    assert!(!out.contains("verification failed"), "{out}");
    let content = data.to_vec();
    assert!(content[300 * 1024 + 4096..500 * 1024]
        .iter()
        .all(|&b| b == 0xab));
    assert!(content[..64 * 1024].iter().all(|&b| b == 0));

    // A failing read surfaces as an I/O error in the client.
    let out = tool(
        "qemu-io",
        ["-f", "raw", "-c", "read 60k 8k", &srv.uri("bad")],
    );
    let printed = text(&out);
    assert!(printed.contains("Input/output error"), "{printed}");
    // The read-only export: qemu sees NBD_FLAG_READ_ONLY and will not open
    // it for writing; read-only it reads fine.
    let out = tool("qemu-io", ["-f", "raw", "-c", "write 0 4k", &srv.uri("ro")]);
    let printed = text(&out);
    assert!(
        !out.status.success() || printed.contains("error"),
        "{printed}"
    );
    assert!(
        printed.contains("Permission denied") || printed.contains("read-only"),
        "{printed}"
    );
    let out = tool_ok(
        "qemu-io",
        ["-r", "-f", "raw", "-c", "read 0 64k", &srv.uri("ro")],
    );
    assert!(out.contains("read 65536/65536 bytes"), "{out}");
    srv.stop().expect("clean stop");
}

#[test]
fn nbdcopy_round_trip_over_several_connections() {
    let target = Arc::new(MemoryExport::new(8 << 20));
    let srv = TestServer::start(vec![ExportConfig::new("t", target.clone())]);
    let dir = tempfile::tempdir().expect("dir");
    let src = dir.path().join("src.raw");
    let mut content = pattern(8 << 20, 77);
    content[1 << 20..3 << 20].fill(0);
    std::fs::write(&src, &content).expect("write source");
    let to = srv.uri("t");
    tool_ok(
        "nbdcopy",
        ["--flush", "-C", "4", src.to_str().expect("utf8"), &to],
    );
    assert!(target.to_vec() == content, "nbdcopy to the server");
    let back = dir.path().join("back.raw");
    tool_ok("nbdcopy", ["-C", "4", &to, back.to_str().expect("utf8")]);
    assert!(
        std::fs::read(&back).expect("read back") == content,
        "nbdcopy from the server"
    );
    srv.stop().expect("clean stop");
}

#[test]
fn fio_random_writes_verify() {
    let target = Arc::new(MemoryExport::new(16 << 20));
    let srv = TestServer::start(vec![ExportConfig::new("f", target)]);
    let out = tool_ok(
        "fio",
        [
            "--name=verify",
            "--ioengine=nbd",
            &format!("--uri={}", srv.uri("f")),
            "--rw=randwrite",
            "--bsrange=512-256k",
            "--iodepth=16",
            "--size=16m",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_state_save=0",
            "--output-format=json",
        ],
    );
    let json_start = out.find('{').expect("fio JSON");
    let v: serde_json::Value = serde_json::from_str(&out[json_start..]).expect("fio JSON");
    let job = &v["jobs"][0];
    assert_eq!(job["error"], 0, "{out}");
    assert!(job["write"]["io_bytes"].as_u64().expect("bytes") >= 16 << 20);
    assert!(
        job["read"]["io_bytes"].as_u64().expect("bytes") > 0,
        "verify read back"
    );
    srv.stop().expect("clean stop");
}
