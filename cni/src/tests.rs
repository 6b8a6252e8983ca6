use super::*;

#[test]
fn host_ifname_is_deterministic_and_short() {
    let a = host_ifname("abc");
    assert_eq!(a, host_ifname("abc"));
    assert_ne!(a, host_ifname("abd"));
    assert_eq!(a.len(), 14);
    assert!(a.starts_with("kst"));
    // sha256("abc") = ba7816bf8f01cfea...
    assert_eq!(a, "kstba7816bf8f0");
}

fn conf() -> NetConf {
    NetConf {
        name: "kestrel".into(),
        subnet: "10.244.1.0/24".parse().unwrap(),
        mtu: 1500,
        gso_max_size: LEGACY_GSO_MAX_SIZE,
        data_dir: "/var/lib/cni/kestrel".into(),
    }
}

#[test]
fn config_validation_names_the_field() {
    assert!(validate_conf(&conf()).is_ok());
    let bad = [
        (
            NetConf {
                name: "../x".into(),
                ..conf()
            },
            "name",
        ),
        (
            NetConf {
                subnet: "10.0.0.5/24".parse().unwrap(),
                ..conf()
            },
            "subnet",
        ),
        (
            NetConf {
                subnet: "10.0.0.0/31".parse().unwrap(),
                ..conf()
            },
            "subnet",
        ),
        (NetConf { mtu: 10, ..conf() }, "mtu"),
        (
            NetConf {
                gso_max_size: 1_000_000,
                ..conf()
            },
            "gsoMaxSize",
        ),
        (
            NetConf {
                data_dir: "rel".into(),
                ..conf()
            },
            "dataDir",
        ),
    ];
    for (c, field) in bad {
        let e = validate_conf(&c).unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(e.to_string().contains(field), "{e}");
    }
}

#[test]
fn attachment_validation_names_the_variable() {
    let e = validate_container_id("").unwrap_err();
    assert_eq!(e.code(), 4);
    assert!(e.to_string().contains("CNI_CONTAINERID"));
    let e = validate_ifname("a/b").unwrap_err();
    assert!(e.to_string().contains("CNI_IFNAME"));
    assert!(validate_ifname("eth0").is_ok());
    assert!(validate_ifname("0123456789abcdef").is_err());
}
