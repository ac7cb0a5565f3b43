//! A customer message stored by a process that died before starting its
//! reply run is routed at the next start.

use std::time::Duration;

use serde_json::Value;
use tandem_model::{Author, AuthorKind, Content, MessageStatus, NewMessage, Role, Visibility};
use tandem_tests::TestServer;

#[tokio::test]
async fn a_message_whose_run_never_started_is_routed_at_the_next_start() {
    let mut server = TestServer::with_ai_off().await;
    let thread = server.thread_for("c1").await;
    // Stored the way the API stores it, but with no run after it: what a
    // crash between the two leaves behind.
    let stored = server
        .store
        .post_message(
            NewMessage {
                id: None,
                thread_id: thread.parse().expect("thread id"),
                role: Role::User,
                agent_name: None,
                author: Author {
                    kind: AuthorKind::Customer,
                    id: Some("c1".into()),
                },
                content: Content::Text("is anyone there?".into()),
                visibility: Visibility::Public,
                status: MessageStatus::Published,
                metadata: Value::Object(Default::default()),
                reply_to: None,
                customer_scope: Some("c1".into()),
            },
            None,
        )
        .await
        .expect("stored");
    assert_eq!(
        inbox(&server, &thread).await,
        Value::Array(vec![]),
        "nothing routed it yet"
    );

    server.restart().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let items = loop {
        let items = inbox(&server, &thread).await;
        if items.as_array().is_some_and(|i| !i.is_empty()) {
            break items;
        }
        assert!(tokio::time::Instant::now() < deadline, "never routed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(items[0]["kind"], "handoff");
    assert_eq!(items[0]["message_id"], stored.value.message.id.to_string());

    // A second restart finds the run and starts nothing more.
    server.restart().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        inbox(&server, &thread).await.as_array().map(Vec::len),
        Some(1)
    );
}

/// The thread's open items, as the admin lists them.
async fn inbox(server: &TestServer, thread: &str) -> Value {
    let path = format!("/v1/inbox?thread_id={thread}");
    server.get(&path, &server.admin).await.body["items"].clone()
}
