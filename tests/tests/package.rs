//! The Debian package as an operator gets it: built by `cargo xtask
//! package`, then taken apart with dpkg-deb. Its files, its maintainer
//! scripts (upgrades keep the XDP filter enforcing, removal detaches it),
//! its unit (`systemd-analyze verify`), and the packaged binary checking
//! the packaged example configuration.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use gateway_tests::pki::TestCa;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_path_buf()
}

fn run(command: &mut Command) -> Output {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Builds the daemon's package (its `dist` build in the shared target
/// directory) and returns the `.deb`.
fn build_package() -> PathBuf {
    let out = run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(workspace_root())
            .args(["xtask", "package", "--daemon-only"]),
    );
    let deb = PathBuf::from(
        text(&out)
            .lines()
            .last()
            .expect("the package's path")
            .trim(),
    );
    assert!(deb.exists(), "{} missing", deb.display());
    deb
}

#[test]
fn the_daemon_package_installs_a_checked_unit_and_keeps_the_filter_across_upgrades() {
    let deb = build_package();
    let info = text(&run(Command::new("dpkg-deb").arg("--info").arg(&deb)));
    assert!(info.contains("Package: gateway\n"), "{info}");
    assert!(info.contains("Architecture: amd64"), "{info}");
    assert!(info.contains("Depends: libc6"), "{info}");

    // Files.
    let contents = text(&run(Command::new("dpkg-deb").arg("--contents").arg(&deb)));
    let paths: Vec<&str> = contents
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .collect();
    let unit = paths
        .iter()
        .find(|p| p.ends_with("/systemd/system/gateway.service"))
        .unwrap_or_else(|| panic!("no unit in:\n{contents}"))
        .trim_start_matches('.')
        .to_owned();
    for expected in [
        "./usr/bin/gateway",
        "./usr/share/doc/gateway/examples/gateway.toml",
        "./usr/share/doc/gateway/README.md",
        "./usr/share/doc/gateway/copyright",
    ] {
        assert!(paths.contains(&expected), "{expected} not in:\n{contents}");
    }
    let binary = contents
        .lines()
        .find(|l| l.ends_with(" ./usr/bin/gateway"))
        .unwrap();
    assert!(binary.starts_with("-rwxr-xr-x 0/0 "), "{binary}");

    let root = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(root.path()));
    let control = root.path().join("DEBIAN");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));

    // Maintainer scripts: valid shell; an upgrade restarts without a stop
    // (the new daemon adopts the pinned filter); removal detaches it.
    for script in ["postinst", "prerm", "postrm"] {
        let path = control.join(script);
        assert!(path.exists(), "no {script} in the package");
        run(Command::new("sh").arg("-n").arg(&path));
    }
    let prerm = std::fs::read_to_string(control.join("prerm")).unwrap();
    assert!(
        prerm.contains("\"$1\" = \"remove\"") && prerm.contains("/usr/bin/gateway xdp detach"),
        "{prerm}"
    );
    assert!(
        !prerm.contains("#DEBHELPER#"),
        "snippets were not filled in:\n{prerm}"
    );
    let postinst = std::fs::read_to_string(control.join("postinst")).unwrap();
    assert!(postinst.contains("gateway.service"), "{postinst}");
    assert!(
        postinst.contains("restart") || postinst.contains("try-restart"),
        "an upgrade must restart the service:\n{postinst}"
    );
    // `stop-on-upgrade = false`: prerm stops the service on removal only.
    assert!(
        prerm.contains("[ \"$1\" = remove ]; then\n\tdeb-systemd-invoke stop gateway.service"),
        "{prerm}"
    );
    assert_eq!(
        prerm.matches("deb-systemd-invoke stop").count(),
        1,
        "{prerm}"
    );

    // The unit: hardening and readiness as documented, and systemd's own
    // checker accepts it (against the packaged binary).
    let unit_path = root.path().join(unit.trim_start_matches('/'));
    let unit_text = std::fs::read_to_string(&unit_path).unwrap();
    for line in [
        "Type=notify",
        "ExecStart=/usr/bin/gateway run --config /etc/gateway/gateway.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=CAP_BPF CAP_NET_ADMIN CAP_PERFMON CAP_NET_BIND_SERVICE",
        "Restart=on-failure",
    ] {
        assert!(
            unit_text.lines().any(|l| l == line),
            "{line} not in:\n{unit_text}"
        );
    }
    // systemd-analyze verify wants the unit's binary at its path: a copy
    // pointing at the extracted one. It exits 0 on unknown keys and bad
    // values, and only says so on stderr.
    let gateway = root.path().join("usr/bin/gateway");
    let checked = root.path().join("verify/gateway.service");
    std::fs::create_dir_all(checked.parent().unwrap()).unwrap();
    std::fs::write(
        &checked,
        unit_text.replace("/usr/bin/gateway", &gateway.display().to_string()),
    )
    .unwrap();
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&checked)
        .output()
        .expect("systemd-analyze (installed by cargo xtask setup)");
    let complaints = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && complaints.trim().is_empty(),
        "systemd-analyze verify: {}\n{complaints}",
        verify.status
    );

    // The packaged binary runs and checks the packaged example, once its
    // certificate files exist.
    let version = text(&run(Command::new(&gateway).arg("--version")));
    assert!(version.starts_with("gateway "), "{version}");
    let etc = root.path().join("etc-gateway");
    std::fs::create_dir_all(&etc).unwrap();
    let issued = TestCa::new().issue(&["origin.example.com"]);
    std::fs::write(etc.join("cert.pem"), &issued.cert_pem).unwrap();
    std::fs::write(etc.join("key.pem"), &issued.key_pem).unwrap();
    let example = std::fs::read_to_string(
        root.path()
            .join("usr/share/doc/gateway/examples/gateway.toml"),
    )
    .unwrap()
    .replace("/etc/gateway/tls", &etc.display().to_string())
    .replace("/var/lib/gateway", &etc.display().to_string());
    let config = etc.join("gateway.toml");
    std::fs::write(&config, &example).unwrap();
    let out = run(Command::new(&gateway).arg("check-config").arg(&config));
    assert!(text(&out).ends_with(": ok\n"), "{}", text(&out));

    // What check-config finds beyond parsing names the key.
    for (broken, key) in [
        (
            example.replace(
                &format!("{}/cert.pem", etc.display()),
                "/nonexistent/cert.pem",
            ),
            "`http.https[0].cert`",
        ),
        (
            example.replace("listen = \"127.0.0.1:9180\"", "listen = \"0.0.0.0:9180\""),
            "`admin.listen`",
        ),
    ] {
        std::fs::write(&config, broken).unwrap();
        let out = Command::new(&gateway)
            .arg("check-config")
            .arg(&config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{stderr}");
        assert!(stderr.contains(key), "{key} not named: {stderr}");
    }
}
