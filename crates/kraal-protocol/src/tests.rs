//! Codec and authentication round trips.

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use super::*;

#[test]
fn frames_round_trip_and_split_across_reads() {
    let mut codec = FrameCodec::default();
    let frames = vec![
        Frame::control(
            1,
            &Request::Exec(ExecRequest {
                argv: vec!["ls".into()],
                env: vec![],
                cwd: None,
                tty: None,
                as_root: false,
            }),
        ),
        Frame::output(1, FrameKind::Stdout, 42, b"hello"),
        Frame::close(1),
    ];
    let mut wire = BytesMut::new();
    for f in &frames {
        codec.encode(f.clone(), &mut wire).unwrap();
    }
    // Feed the bytes one at a time: the decoder must wait for whole frames.
    let mut got = Vec::new();
    let mut buf = BytesMut::new();
    for b in wire.iter() {
        buf.extend_from_slice(&[*b]);
        while let Some(f) = codec.decode(&mut buf).unwrap() {
            got.push(f);
        }
    }
    assert_eq!(got, frames);
    let (seq, bytes) = got[1].split_output().unwrap();
    assert_eq!((seq, &bytes[..]), (42, &b"hello"[..]));
    let req: Request = got[0].parse().unwrap();
    assert!(matches!(req, Request::Exec(e) if e.argv == ["ls"]));
}

#[test]
fn unknown_kind_and_short_frames_are_errors_not_panics() {
    let mut codec = FrameCodec::default();
    let mut buf = BytesMut::from(&[0u8, 0, 0, 5, 0, 0, 0, 1, 99][..]);
    assert!(matches!(
        codec.decode(&mut buf),
        Err(CodecError::Kind { kind: 99 })
    ));
    let mut codec = FrameCodec::default();
    let mut buf = BytesMut::from(&[0u8, 0, 0, 2, 0, 0][..]);
    assert!(matches!(
        codec.decode(&mut buf),
        Err(CodecError::Short { len: 2 })
    ));
}

#[test]
fn oversized_frames_are_refused() {
    let mut codec = FrameCodec::default();
    let len = (MAX_FRAME as u32 + 100).to_be_bytes();
    let mut buf = BytesMut::from(&len[..]);
    buf.extend_from_slice(&[0; 16]);
    assert!(codec.decode(&mut buf).is_err());
}

#[test]
fn mac_verifies_only_with_the_right_token() {
    let c = Challenge::new();
    let mac = compute_mac("secret", &c.nonce);
    assert!(verify_mac("secret", &c.nonce, &mac).is_ok());
    assert_eq!(verify_mac("other", &c.nonce, &mac), Err(AuthError::BadMac));
    assert_eq!(
        verify_mac("secret", &c.nonce, "abc"),
        Err(AuthError::Malformed)
    );
    assert_ne!(Challenge::new().nonce, c.nonce);
}

#[test]
fn messages_have_stable_json() {
    let m = StreamMsg::Exit {
        code: Some(3),
        signal: None,
    };
    assert_eq!(
        serde_json::to_string(&m).unwrap(),
        r#"{"type":"exit","code":3,"signal":null}"#
    );
    let r = Request::Attach { proc: 7, after: 10 };
    assert_eq!(
        serde_json::to_string(&r).unwrap(),
        r#"{"op":"attach","proc":7,"after":10}"#
    );
    let e = StreamMsg::Error(GuestError::new(ErrorCode::PathEscape, "x"));
    assert_eq!(
        serde_json::to_string(&e).unwrap(),
        r#"{"type":"error","code":"path_escape","message":"x"}"#
    );
}

/// Regression: a session event carries its own `type` tag, which once collided with the
/// stream message's tag ("duplicate field `type`") and broke every event subscription.
#[test]
fn session_events_and_launch_settings_round_trip() {
    use kraal_core::{AgentEvent, AgentKind, AgentSpec, ModelGateway, SessionEvent, SessionState};
    for event in [
        AgentEvent::State {
            state: SessionState::Working,
            reason: None,
        },
        AgentEvent::AssistantDelta { text: "hi".into() },
        AgentEvent::ToolCall {
            id: "t".into(),
            name: "Bash".into(),
            input: serde_json::json!({"type": "nested"}),
        },
    ] {
        let m = StreamMsg::Event {
            event: SessionEvent {
                seq: 9,
                at_ms: 1,
                event,
            },
        };
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(
            serde_json::from_str::<StreamMsg>(&text).unwrap(),
            m,
            "{text}"
        );
    }
    let r = Request::SessionStart {
        id: "se-000000000001".into(),
        spec: AgentSpec::new(AgentKind::Codex),
        message: Some("go".into()),
        launch: Launch {
            env: vec![("A".into(), "b".into())],
            gateway: Some(ModelGateway {
                url: "http://10.0.0.1:7072".into(),
                key: "sk-kraal-x".into(),
            }),
        },
    };
    let text = serde_json::to_string(&r).unwrap();
    assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), r, "{text}");
    // Older hosts send no launch settings at all.
    let bare: Request =
        serde_json::from_str(r#"{"op":"session_input","id":"x","input":{"type":"interrupt"}}"#)
            .unwrap();
    assert!(matches!(bare, Request::SessionInput { launch, .. } if launch == Launch::default()));
}
