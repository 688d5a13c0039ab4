use super::*;

fn cfg() -> ProviderConfig {
    let mut instances = BTreeMap::new();
    instances.insert(
        "acme-registry.cn-hangzhou.cr.aliyuncs.com".to_owned(),
        ("cri-acme".to_owned(), None),
    );
    instances.insert(
        "acme-registry-vpc.cn-hangzhou.cr.aliyuncs.com".to_owned(),
        ("cri-acme".to_owned(), None),
    );
    instances.insert(
        "images.example.com".to_owned(),
        ("cri-acme".to_owned(), Some("cn-shanghai".to_owned())),
    );
    instances.insert("nowhere.example.com".to_owned(), ("cri-x".to_owned(), None));
    ProviderConfig {
        instances,
        region: None,
        oidc_provider_arn: Some("acs:ram::1234567890123456:oidc-provider/ack-rrsa-c1".into()),
        role_annotation: ROLE_ANNOTATION.into(),
        assume_role_arn: None,
        duration_seconds: 3600,
    }
}

#[test]
fn image_hosts_are_read_as_the_kubelet_reads_them() {
    for (image, host) in [
        (
            "acme-registry.cn-hangzhou.cr.aliyuncs.com/team/app:1",
            "acme-registry.cn-hangzhou.cr.aliyuncs.com",
        ),
        (
            "registry.cn-beijing.aliyuncs.com/ns/app@sha256:abc",
            "registry.cn-beijing.aliyuncs.com",
        ),
        ("Images.Example.com:5000/a/b", "images.example.com:5000"),
        ("localhost/app", "localhost"),
        ("nginx", "docker.io"),
        ("library/nginx:1", "docker.io"),
    ] {
        assert_eq!(image_host(image), host, "{image}");
    }
}

#[test]
fn every_registry_kind_routes_to_its_instance() {
    let c = cfg();
    let ent = |host: &str, region: &str| Route::Enterprise {
        host: host.into(),
        instance_id: "cri-acme".into(),
        region: region.into(),
    };
    let cases = [
        // Enterprise public and VPC domains: the region comes from the host.
        (
            "acme-registry.cn-hangzhou.cr.aliyuncs.com/t/app:1",
            ent("acme-registry.cn-hangzhou.cr.aliyuncs.com", "cn-hangzhou"),
        ),
        (
            "acme-registry-vpc.cn-hangzhou.cr.aliyuncs.com/t/app:1",
            ent(
                "acme-registry-vpc.cn-hangzhou.cr.aliyuncs.com",
                "cn-hangzhou",
            ),
        ),
        // A custom domain: the region configured with it.
        (
            "images.example.com/t/app:1",
            ent("images.example.com", "cn-shanghai"),
        ),
        // Personal Edition, every naming.
        (
            "registry.cn-beijing.aliyuncs.com/ns/app",
            Route::Personal {
                host: "registry.cn-beijing.aliyuncs.com".into(),
                region: "cn-beijing".into(),
            },
        ),
        (
            "registry-intl-vpc.ap-southeast-1.aliyuncs.com/ns/app",
            Route::Personal {
                host: "registry-intl-vpc.ap-southeast-1.aliyuncs.com".into(),
                region: "ap-southeast-1".into(),
            },
        ),
        // Anything else: nothing.
        (
            "nginx",
            Route::Unmatched {
                host: "docker.io".into(),
            },
        ),
        (
            "registry.example.aliyuncs.com.evil.com/x",
            Route::Unmatched {
                host: "registry.example.aliyuncs.com.evil.com".into(),
            },
        ),
        (
            "other-registry.cn-hangzhou.cr.aliyuncs.com/x",
            Route::Unmatched {
                host: "other-registry.cn-hangzhou.cr.aliyuncs.com".into(),
            },
        ),
    ];
    for (image, want) in cases {
        assert_eq!(route(image, &c).ok(), Some(want), "{image}");
    }
    // A custom domain without a region anywhere is a configuration error, named.
    let e = route("nowhere.example.com/a", &c)
        .err()
        .map(|e| e.to_string());
    assert!(
        e.as_deref()
            .is_some_and(|e| e.contains("nowhere.example.com=cri-x")),
        "{e:?}"
    );
}

#[test]
fn the_role_comes_from_the_service_account_annotation() {
    let provider = "acs:ram::1234567890123456:oidc-provider/ack-rrsa-c1";
    let ann = |v: &str| BTreeMap::from([(ROLE_ANNOTATION.to_owned(), v.to_owned())]);
    assert_eq!(
        role_arn(&ann("puller"), ROLE_ANNOTATION, provider).ok(),
        Some("acs:ram::1234567890123456:role/puller".to_owned())
    );
    assert_eq!(
        role_arn(&ann("acs:ram::99:role/x"), ROLE_ANNOTATION, provider).ok(),
        Some("acs:ram::99:role/x".to_owned())
    );
    let e = role_arn(&BTreeMap::new(), ROLE_ANNOTATION, provider)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains(ROLE_ANNOTATION), "{e}");
    let e = role_arn(&ann("puller"), ROLE_ANNOTATION, "not-an-arn")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("--oidc-provider-arn"), "{e}");
}

#[test]
fn the_cache_holds_half_the_remaining_life_within_bounds() {
    let now: Timestamp = "2026-11-24T10:00:00Z"
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    let at = |s: i64| {
        now.checked_add(jiff::SignedDuration::from_secs(s))
            .unwrap_or(now)
    };
    assert_eq!(cache_duration(now, at(3600)), Duration::from_secs(1800));
    assert_eq!(cache_duration(now, at(48 * 3600)), MAX_CACHE);
    assert_eq!(cache_duration(now, at(150)), Duration::from_secs(75));
    assert_eq!(cache_duration(now, at(100)), MIN_CACHE, "bounded below");
    assert_eq!(
        cache_duration(now, at(30)),
        Duration::from_secs(20),
        "ends 10 s before expiry"
    );
    assert_eq!(cache_duration(now, at(12)), Duration::from_secs(6));
    assert_eq!(cache_duration(now, at(-5)), Duration::ZERO);
    assert_eq!(go_duration(Duration::from_secs(1800)), "30m0s");
    assert_eq!(go_duration(Duration::from_secs(43_200)), "12h0m0s");
    assert_eq!(go_duration(Duration::from_secs(45)), "45s");
}

#[test]
fn requests_are_checked_and_errors_name_the_problem_without_the_token() {
    let ok = br#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest","image":"registry.cn-beijing.aliyuncs.com/a/b","serviceAccountToken":"eyJsecret-token","serviceAccountAnnotations":{"a":"b"}}"#;
    let r = api::parse_request(ok).unwrap_or_else(|e| panic!("{e}"));
    assert!(r.service_account_token.is_some());
    assert!(!format!("{r:?}").contains("eyJsecret"), "{r:?}");
    for (bytes, says) in [
        (&b"{"[..], "ends too early"),
        (b"not json", "not JSON"),
        (br#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest"}"#, "missing field `image`"),
        (br#"{"apiVersion":"v1","kind":"CredentialProviderRequest","image":"x/y"}"#, "apiVersion \"v1\""),
        (br#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"Other","image":"x/y"}"#, "kind \"Other\""),
        (br#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest","image":" "}"#, "image is empty"),
        (br#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest","image":"x/y","serviceAccountToken":7}"#, "wrong type"),
    ] {
        let e = api::parse_request(bytes)
            .err()
            .unwrap_or_else(|| panic!("accepted"));
        assert!(e.contains(says), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }
}

#[test]
fn a_value_in_the_wrong_place_is_never_quoted() {
    let e = api::parse_request(
        br#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest","image":"x/y","serviceAccountAnnotations":"eyJtoken-in-the-wrong-place"}"#,
    )
    .err()
    .unwrap_or_default();
    assert!(e.contains("wrong type") && !e.contains("eyJ"), "{e}");
}

#[test]
fn responses_have_exactly_the_v1_fields() {
    let r = api::Response::login(
        "registry.cn-beijing.aliyuncs.com",
        "u".into(),
        SecretString::from("p"),
        Duration::from_secs(1800),
    );
    let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        v,
        serde_json::json!({
            "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
            "kind": "CredentialProviderResponse",
            "cacheKeyType": "Registry",
            "cacheDuration": "30m0s",
            "auth": {"registry.cn-beijing.aliyuncs.com": {"username": "u", "password": "p"}},
        })
    );
    assert!(!format!("{r:?}").contains("\"p\""));
    let empty: serde_json::Value =
        serde_json::from_str(&api::Response::empty(UNMATCHED_CACHE).to_json())
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(empty["auth"], serde_json::json!({}));
    assert_eq!(empty["cacheDuration"], "1h0m0s");
}

#[test]
fn access_key_files_are_read_without_quoting_them() {
    let c = parse_access_key_file(r#"{"AccessKeyId":"LTAI5t","AccessKeySecret":"s3cret"}"#)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.access_key_id, "LTAI5t");
    let c = parse_access_key_file(r#"{"accessKeyId":"LTAI5t","accessKeySecret":"s3cret"}"#);
    assert!(c.is_ok());
    let e = parse_access_key_file(r#"{"AccessKeyId":"LTAI5t","AccessKeySecret":"s3cret""#)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.contains("--access-key-file") && !e.contains("s3cret"),
        "{e}"
    );
}
