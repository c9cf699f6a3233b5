//! Unit tests of the policy: patterns, tokens, JWTs, certificates and the method table.

#![allow(clippy::unwrap_used)]

use jsonwebtoken::{EncodingKey, Header};

use super::*;

fn headers(authorization: &str) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    headers.insert("authorization", authorization.parse().unwrap());
    headers
}

const READ: Need = Need::Permission(Permission::CacheRead);
const WRITE: Need = Need::Permission(Permission::CacheWrite);

#[test]
fn patterns_glob_with_stars_only() {
    for (pattern, name, expected) in [
        ("*", "", true),
        ("*", "a/b", true),
        ("", "", true),
        ("", "a", false),
        ("a", "a", true),
        ("a", "ab", false),
        ("team-*", "team-a/x", true),
        ("team-*", "team", false),
        ("*-ci", "x-ci", true),
        ("a*b*c", "aXbYc", true),
        ("a*b*c", "aXbY", false),
        ("?", "a", false),
        ("**", "anything", true),
    ] {
        assert_eq!(
            Pattern::new(pattern).matches(name),
            expected,
            "{pattern:?} ~ {name:?}"
        );
    }
    // A hostile pattern is still fast (linear with backtracking to the last star).
    let long = "a".repeat(10_000);
    assert!(!Pattern::new(format!("{}b", "*a".repeat(100))).matches(&long));
}

fn token_file(entries: &[(&str, &str, &[&str], &[&str])]) -> String {
    let mut text = String::new();
    for (name, token, permissions, instances) in entries {
        text += &format!(
            "[[token]]\nname = {name:?}\nsha256 = {:?}\npermissions = {permissions:?}\ninstances = {instances:?}\n",
            hash_token(token)
        );
    }
    text
}

#[test]
fn tokens_grant_their_permissions_on_their_instances_only() {
    let tokens = TokenSet::parse(&token_file(&[
        ("reader", "read-token", &["cache-read"], &["a"]),
        (
            "ci",
            "ci-token",
            &["cache-read", "cache-write", "execute"],
            &["*"],
        ),
    ]))
    .unwrap();
    let policy = AuthPolicy::builder().tokens(tokens).build();
    let reader = policy
        .authenticate(&headers("Bearer read-token"), None)
        .unwrap();
    assert_eq!(reader.name, "reader");
    assert!(reader.allows(READ, "a"));
    assert!(!reader.allows(READ, "b"));
    assert!(!reader.allows(WRITE, "a"));
    assert!(!reader.allows(Need::Cluster, "a"));
    let ci = policy
        .authenticate(&headers("bearer ci-token"), None)
        .unwrap();
    assert!(ci.allows(WRITE, "anything/at/all"));
    assert!(!ci.allows(Need::Permission(Permission::Admin), "a"));

    for bad in [
        "Bearer wrong",
        "Basic cmVhZC10b2tlbg==",
        "Bearer",
        "read-token",
    ] {
        let error = policy.authenticate(&headers(bad), None).unwrap_err();
        assert_eq!(error.code(), tonic::Code::Unauthenticated, "{bad}");
        assert!(!error.to_string().contains("read-token"), "{error}");
    }
    let none = policy
        .authenticate(&http::HeaderMap::new(), None)
        .unwrap_err();
    assert_eq!(none.code(), tonic::Code::Unauthenticated);
}

#[test]
fn anonymous_callers_get_the_anonymous_grant_but_a_bad_token_is_still_refused() {
    let tokens =
        TokenSet::parse(&token_file(&[("ci", "ci-token", &["cache-write"], &["*"])])).unwrap();
    let policy = AuthPolicy::builder()
        .tokens(tokens)
        .anonymous(Grant::new([Permission::CacheRead], vec![Pattern::new("*")]))
        .build();
    let anonymous = policy.authenticate(&http::HeaderMap::new(), None).unwrap();
    assert!(anonymous.allows(READ, ""));
    assert!(!anonymous.allows(WRITE, ""));
    let wrong = policy
        .authenticate(&headers("Bearer nope"), None)
        .unwrap_err();
    assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
    let open = AuthPolicy::open()
        .authenticate(&http::HeaderMap::new(), None)
        .unwrap();
    assert!(open.allows(Need::Cluster, "x") && open.allows(WRITE, "x"));
}

#[test]
fn token_files_are_checked_and_never_echo_a_hash() {
    let hash = hash_token("t");
    for (text, expected) in [
        (
            "[[token]]\nname = \"x\"\nsha256 = \"abc\"\npermissions = [\"cache-read\"]\n",
            "64 hex digits",
        ),
        (
            &*format!("[[token]]\nname = \"x\"\nsha256 = \"{hash}\"\npermissions = []\n"),
            "no permissions",
        ),
        (
            &*format!("[[token]]\nname = \"x\"\nsha256 = \"{hash}\"\npermissions = [\"root\"]\n"),
            "unknown permission",
        ),
        (
            &*format!(
                "[[token]]\nname = \"x\"\nsha256 = \"{hash}\"\npermissions = [\"admin\"]\nextra = 1\n"
            ),
            "unknown field",
        ),
        (
            &*format!(
                "[[token]]\nname = \"x\"\nsha256 = \"{hash}\"\npermissions = [\"admin\"]\n[[token]]\nname = \"y\"\nsha256 = \"{hash}\"\npermissions = [\"admin\"]\n"
            ),
            "twice",
        ),
    ] {
        let error = TokenSet::parse(text).unwrap_err().to_string();
        assert!(error.contains(expected), "{error}");
        assert!(!error.contains(&hash), "{error}");
    }
    let set = TokenSet::parse(&token_file(&[("n", "secret-token", &["admin"], &["*"])])).unwrap();
    assert!(!format!("{set:?}").contains(&hash_token("secret-token")));
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
    permissions: &'a [&'a str],
    instances: &'a [&'a str],
}

fn hs(key: &[u8]) -> EncodingKey {
    EncodingKey::from_secret(key).unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn jwts_are_verified_mapped_to_grants_and_refused_when_expired() {
    let secret = b"0123456789abcdef0123456789abcdef-hs256";
    let verifier = JwtVerifier::from_key(secret, JwtSettings::default()).unwrap();
    let policy = AuthPolicy::builder().jwt(verifier).build();
    let sign = |exp: u64, key: &[u8]| {
        let claims = Claims {
            sub: "alice",
            exp,
            permissions: &["cache-read"],
            instances: &["a"],
        };
        jsonwebtoken::encode(&Header::default(), &claims, &hs(key)).unwrap()
    };
    let alice = policy
        .authenticate(
            &headers(&format!("Bearer {}", sign(now() + 600, secret))),
            None,
        )
        .unwrap();
    assert_eq!((alice.name.as_str(), alice.method), ("alice", Method::Jwt));
    assert!(alice.allows(READ, "a") && !alice.allows(READ, "b") && !alice.allows(WRITE, "a"));

    let expired = policy
        .authenticate(
            &headers(&format!("Bearer {}", sign(now() - 600, secret))),
            None,
        )
        .unwrap_err();
    assert_eq!(expired.code(), tonic::Code::Unauthenticated);
    assert!(expired.to_string().contains("expired"), "{expired}");
    let forged = policy
        .authenticate(
            &headers(&format!(
                "Bearer {}",
                sign(now() + 600, b"another-secret-another-secret-xx")
            )),
            None,
        )
        .unwrap_err();
    assert!(forged.to_string().contains("signature"), "{forged}");
}

#[test]
fn es256_keys_and_jwks_verify_their_own_tokens_only() {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let verifier =
        JwtVerifier::from_key(key.public_key_pem().as_bytes(), JwtSettings::default()).unwrap();
    let encoding = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
    let claims = Claims {
        sub: "ci",
        exp: now() + 600,
        permissions: &["execute"],
        instances: &["*"],
    };
    let token = jsonwebtoken::encode(
        &Header::new(jsonwebtoken::Algorithm::ES256),
        &claims,
        &encoding,
    )
    .unwrap();
    let ci = verifier.verify(&token).unwrap();
    assert!(ci.allows(Need::Permission(Permission::Execute), "x"));
    // An HS256 token made with the public key as its secret is refused (algorithm confusion).
    let confused = jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &hs(key.public_key_pem().as_bytes()),
    )
    .unwrap();
    assert_eq!(
        verifier.verify(&confused).unwrap_err().code(),
        tonic::Code::Unauthenticated
    );

    let jwks =
        r#"{"keys":[{"kty":"oct","kid":"k1","k":"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY"}]}"#;
    let verifier = JwtVerifier::from_jwks(jwks, JwtSettings::default()).unwrap();
    let mut header = Header {
        kid: Some("k1".into()),
        ..Header::default()
    };
    let token =
        jsonwebtoken::encode(&header, &claims, &hs(b"0123456789abcdef0123456789abcdef")).unwrap();
    assert_eq!(verifier.verify(&token).unwrap().name, "ci");
    header.kid = Some("k2".into());
    let other =
        jsonwebtoken::encode(&header, &claims, &hs(b"0123456789abcdef0123456789abcdef")).unwrap();
    assert!(verifier.verify(&other).is_err());
}

#[test]
fn certificates_are_mapped_by_name_and_cluster_names_make_members() {
    let make = |cn: &str, san: &str| {
        let mut params = rcgen::CertificateParams::new(vec![san.to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    };
    let client = make("remexec-client", "builder.ci.example");
    let cluster = make("remexec-cluster", "remexec-cluster");
    assert_eq!(
        certificate_names(&client).unwrap(),
        ["remexec-client", "builder.ci.example"]
    );
    let policy = AuthPolicy::builder()
        .cert_rule(CertRule {
            names: vec![Pattern::new("*.ci.example")],
            grant: Grant::new([Permission::CacheRead], vec![Pattern::new("*")]),
        })
        .cluster_names(vec![Pattern::new("remexec-cluster")])
        .build();
    let none = http::HeaderMap::new();
    let who = policy
        .authenticate(&none, Some(std::slice::from_ref(&client)))
        .unwrap();
    assert!(who.allows(READ, "x") && !who.allows(Need::Cluster, ""));
    let member = policy
        .authenticate(&none, Some(std::slice::from_ref(&cluster)))
        .unwrap();
    assert!(member.cluster);
    let stranger = make("someone", "else.example");
    let refused = policy
        .authenticate(&none, Some(std::slice::from_ref(&stranger)))
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
}

#[test]
fn every_reapi_method_needs_a_permission() {
    use methods::InstanceFrom;
    for (path, need, from) in [
        (
            "/build.bazel.remote.execution.v2.ActionCache/GetActionResult",
            READ,
            InstanceFrom::InstanceField,
        ),
        (
            "/build.bazel.remote.execution.v2.ActionCache/UpdateActionResult",
            WRITE,
            InstanceFrom::InstanceField,
        ),
        (
            "/build.bazel.remote.execution.v2.ContentAddressableStorage/BatchUpdateBlobs",
            WRITE,
            InstanceFrom::InstanceField,
        ),
        (
            "/google.bytestream.ByteStream/Write",
            WRITE,
            InstanceFrom::ResourceField,
        ),
        (
            "/google.bytestream.ByteStream/Read",
            READ,
            InstanceFrom::ResourceField,
        ),
        (
            "/build.bazel.remote.execution.v2.Execution/Execute",
            Need::Permission(Permission::Execute),
            InstanceFrom::InstanceField,
        ),
        (
            "/build.bazel.remote.asset.v1.Fetch/FetchBlob",
            Need::Both(Permission::CacheRead, Permission::Fetch),
            InstanceFrom::InstanceField,
        ),
        (
            "/build.bazel.remote.asset.v1.Fetch/FetchDirectory",
            Need::Both(Permission::CacheRead, Permission::Fetch),
            InstanceFrom::InstanceField,
        ),
        (
            "/build.bazel.remote.asset.v1.Push/PushBlob",
            WRITE,
            InstanceFrom::InstanceField,
        ),
        (
            "/remexec.worker.v1.WorkerService/Attach",
            Need::Cluster,
            InstanceFrom::None,
        ),
        (
            "/unknown.Service/Method",
            Need::Permission(Permission::Admin),
            InstanceFrom::None,
        ),
        (
            "garbage",
            Need::Permission(Permission::Admin),
            InstanceFrom::None,
        ),
    ] {
        assert_eq!(method_need(path), (need, from), "{path}");
    }
}

#[test]
fn fetching_needs_cache_read_and_fetch_from_one_grant_or_two() {
    let fetch = Need::Both(Permission::CacheRead, Permission::Fetch);
    let principal = |grants: Vec<Grant>| Principal {
        name: "p".into(),
        method: Method::Token,
        grants,
        cluster: false,
    };
    let grant = |p: &[&str], i: &[&str]| Grant::parse(p, i).unwrap();
    let reader = principal(vec![grant(&["cache-read"], &["*"])]);
    assert!(!reader.allows(fetch, "a"));
    assert!(reader.authorize_somewhere(fetch, "FetchBlob").is_err());
    let fetcher = principal(vec![grant(&["fetch"], &["*"])]);
    assert!(!fetcher.allows(fetch, "a"));
    let both = principal(vec![grant(&["cache-read", "fetch"], &["a"])]);
    assert!(both.allows(fetch, "a"));
    assert!(!both.allows(fetch, "b"));
    // From two grants, each on the instance.
    let split = principal(vec![
        grant(&["cache-read"], &["*"]),
        grant(&["fetch"], &["a"]),
    ]);
    assert!(split.allows(fetch, "a"));
    assert!(!split.allows(fetch, "b"));
    assert!(split.authorize_somewhere(fetch, "FetchBlob").is_ok());
    let err = reader.authorize(fetch, "a", "FetchBlob").unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(err.to_string().contains("cache-read and fetch"), "{err}");
}

/// A 2048-bit RSA key made for this test only (`openssl genpkey`), never trusted anywhere.
const RSA_TEST_KEY: &str = include_str!("testdata/rsa-test-only.key");
const RSA_TEST_PUB: &str = include_str!("testdata/rsa-test-only.pub");

#[test]
fn rs256_keys_verify_their_own_tokens_and_refuse_others() {
    let verifier = JwtVerifier::from_key(RSA_TEST_PUB.as_bytes(), JwtSettings::default()).unwrap();
    let claims = Claims {
        sub: "rsa",
        exp: now() + 600,
        permissions: &["cache-read", "cache-write"],
        instances: &["*"],
    };
    let key = EncodingKey::from_rsa_pem(RSA_TEST_KEY.as_bytes()).unwrap();
    let token =
        jsonwebtoken::encode(&Header::new(jsonwebtoken::Algorithm::RS256), &claims, &key).unwrap();
    let who = verifier.verify(&token).unwrap();
    assert!(who.allows(WRITE, "x") && !who.allows(Need::Permission(Permission::Execute), "x"));
    let expired = Claims {
        exp: now() - 600,
        ..claims
    };
    let token =
        jsonwebtoken::encode(&Header::new(jsonwebtoken::Algorithm::RS256), &expired, &key).unwrap();
    assert!(
        verifier
            .verify(&token)
            .unwrap_err()
            .to_string()
            .contains("expired")
    );
    // Settings: a required issuer refuses a token without it.
    let strict = JwtVerifier::from_key(
        RSA_TEST_PUB.as_bytes(),
        JwtSettings {
            issuer: Some("https://issuer.example".into()),
            ..JwtSettings::default()
        },
    )
    .unwrap();
    let token = jsonwebtoken::encode(
        &Header::new(jsonwebtoken::Algorithm::RS256),
        &Claims {
            exp: now() + 600,
            ..expired
        },
        &key,
    )
    .unwrap();
    assert_eq!(
        strict.verify(&token).unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
}

/// Runs `request` through an [`AuthLayer`] over a service that answers 200 if the body it
/// gets is exactly `expected` (the layer replays what it read) and `DATA_LOSS` otherwise;
/// returns the gRPC code of the answer (`Ok` when it reached the service intact).
async fn through_layer_expecting(
    layer: AuthLayer,
    request: http::Request<tonic::body::Body>,
    expected: bytes::Bytes,
) -> tonic::Code {
    use http_body_util::BodyExt;
    use tower::{Layer, ServiceExt};
    let inner = tower::service_fn(move |request: http::Request<tonic::body::Body>| {
        let expected = expected.clone();
        async move {
            let got = request.into_body().collect().await.map(|b| b.to_bytes());
            let mut response = http::Response::new(tonic::body::Body::default());
            if got.ok() != Some(expected) {
                response
                    .headers_mut()
                    .insert("grpc-status", "15".parse().unwrap());
            }
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let response = layer.layer(inner).oneshot(request).await.unwrap();
    response
        .headers()
        .get("grpc-status")
        .map_or(tonic::Code::Ok, |v| tonic::Code::from_bytes(v.as_bytes()))
}

fn grpc_request(path: &str, body: tonic::body::Body) -> http::Request<tonic::body::Body> {
    http::Request::builder()
        .uri(format!("http://x{path}"))
        .body(body)
        .unwrap()
}

/// One gRPC frame holding a message whose field 1 is `instance`.
fn frame(instance: &str) -> bytes::Bytes {
    let mut message = vec![0x0a, u8::try_from(instance.len()).unwrap()];
    message.extend_from_slice(instance.as_bytes());
    let mut framed = vec![0u8];
    framed.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    framed.extend_from_slice(&message);
    framed.into()
}

async fn through_layer(layer: AuthLayer, request: http::Request<tonic::body::Body>) -> tonic::Code {
    through_layer_expecting(layer, request, frame("a")).await
}

#[tokio::test]
async fn the_layer_reads_the_instance_from_the_first_message_and_bounds_the_wait_for_it() {
    let tokens =
        TokenSet::parse(&token_file(&[("a", "a-token", &["cache-read"], &["a"])])).unwrap();
    let layer = AuthLayer::new(AuthPolicy::builder().tokens(tokens).build(), 1 << 20)
        .first_message_timeout(std::time::Duration::from_millis(200));
    let path = "/build.bazel.remote.execution.v2.ActionCache/GetActionResult";
    let with_token = |instance: &str| {
        let mut request = grpc_request(
            path,
            tonic::body::Body::new(http_body_util::Full::new(frame(instance))),
        );
        request
            .headers_mut()
            .insert("authorization", "Bearer a-token".parse().unwrap());
        request
    };
    assert_eq!(
        through_layer(layer.clone(), with_token("a")).await,
        tonic::Code::Ok
    );
    assert_eq!(
        through_layer(layer.clone(), with_token("b")).await,
        tonic::Code::PermissionDenied
    );
    let anonymous = grpc_request(
        path,
        tonic::body::Body::new(http_body_util::Full::new(frame("a"))),
    );
    assert_eq!(
        through_layer(layer.clone(), anonymous).await,
        tonic::Code::Unauthenticated
    );
    // A caller that sends headers and never a message is answered once the deadline passes.
    let silent =
        futures::stream::pending::<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>();
    let mut request = grpc_request(
        path,
        tonic::body::Body::new(http_body_util::StreamBody::new(silent)),
    );
    request
        .headers_mut()
        .insert("authorization", "Bearer a-token".parse().unwrap());
    let started = std::time::Instant::now();
    assert_eq!(
        through_layer(layer, request).await,
        tonic::Code::DeadlineExceeded
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn public_keys_in_the_wrong_form_never_become_hs256_secrets() {
    let jwks = br#"{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB","kid":"k"}]}"#;
    let ssh = b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleExampleExampleExample user@host";
    let der = [
        0x30u8, 0x82, 0x01, 0x22, 0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01,
        0x01, 0x01, 0x05, 0x00, 0x03, 0x82, 0x01, 0x0f, 0x00, 0x30, 0x82, 0x01, 0x0a, 0x02, 0x82,
        0x01, 0x01, 0x00, 0xc0,
    ];
    for key in [&jwks[..], &ssh[..], &der[..]] {
        let error = JwtVerifier::from_key(key, JwtSettings::default()).unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument, "{error}");
    }
    assert!(
        JwtVerifier::from_key(
            b"a-printable-shared-secret-of-32-bytes!",
            JwtSettings::default()
        )
        .is_ok()
    );
}

#[tokio::test]
async fn the_layer_replays_a_first_message_split_across_frames_and_refuses_what_it_cannot_read() {
    let layer = AuthLayer::new(AuthPolicy::builder().anonymous(Grant::all()).build(), 64);
    let path = "/build.bazel.remote.execution.v2.ActionCache/GetActionResult";
    let framed = frame("a");
    // Three data frames: the header split, then the message; the service gets every byte.
    let pieces: Vec<Result<http_body::Frame<bytes::Bytes>, tonic::Status>> = vec![
        Ok(http_body::Frame::data(framed.slice(..2))),
        Ok(http_body::Frame::data(framed.slice(2..6))),
        Ok(http_body::Frame::data(framed.slice(6..))),
    ];
    let split = tonic::body::Body::new(http_body_util::StreamBody::new(futures::stream::iter(
        pieces,
    )));
    assert_eq!(
        through_layer(layer.clone(), grpc_request(path, split)).await,
        tonic::Code::Ok
    );
    // A compressed first message cannot be read: refused, not passed through unchecked.
    let mut compressed = framed.to_vec();
    compressed[0] = 1;
    let body = tonic::body::Body::new(http_body_util::Full::new(bytes::Bytes::from(compressed)));
    assert_eq!(
        through_layer(layer.clone(), grpc_request(path, body)).await,
        tonic::Code::Unimplemented
    );
    // A first message over the limit (64 bytes here) is refused before it is buffered.
    let body = tonic::body::Body::new(http_body_util::Full::new(frame(&"x".repeat(100))));
    assert_eq!(
        through_layer(layer.clone(), grpc_request(path, body)).await,
        tonic::Code::ResourceExhausted
    );
    // A body that ends inside its first message.
    let body = tonic::body::Body::new(http_body_util::Full::new(framed.slice(..4)));
    assert_eq!(
        through_layer(layer, grpc_request(path, body)).await,
        tonic::Code::InvalidArgument
    );
}

#[test]
fn a_hash_in_the_wrong_field_is_not_echoed_by_the_parser_error() {
    // Found by the `tokens` fuzz target: toml quotes a mistyped value in its message.
    let hash = hash_token("t");
    let text = format!("[[token]]\nname = \"ci\"\nsha256 = \"{hash}\"\npermissions = \"{hash}\"\n");
    let error = TokenSet::parse(&text).unwrap_err().to_string();
    assert!(!error.contains(&hash), "{error}");
    assert!(error.contains("expected a sequence"), "{error}");
}

#[test]
fn a_long_unknown_permission_is_not_echoed() {
    // Found by the `tokens` fuzz target: a hash pasted into `permissions` came back in the error.
    let hash = hash_token("t");
    let text =
        format!("[[token]]\nname = \"ci\"\nsha256 = \"{hash}\"\npermissions = [\"x{hash}\"]\n");
    let error = TokenSet::parse(&text).unwrap_err().to_string();
    assert!(!error.contains(&hash), "{error}");
    assert!(
        error.contains("unknown permission of 65 characters"),
        "{error}"
    );
    let typo = TokenSet::parse(&format!(
        "[[token]]\nname = \"ci\"\nsha256 = \"{hash}\"\npermissions = [\"cache-rad\"]\n"
    ));
    assert!(typo.unwrap_err().to_string().contains("\"cache-rad\""));
}
