//! Integration tests through HTTP on loopback. The same tests run on SQLite
//! (default) and on PostgreSQL (`TANDEM_TEST_DATABASE_URL=postgres://…`).

mod auth;
mod bad_input;
mod claims;
mod connections;
mod copilot;
mod customer_paths;
mod customer_view;
mod desk;
mod desk_metrics;
mod hub;
mod idempotency;
mod inbox;
mod injection;
mod messages;
mod model_endpoint;
mod operations;
mod proxy;
mod reply;
mod reply_transactions;
mod routing;
mod takeover;
mod threads;
mod web_access;
mod workflows;
mod ws_access;
mod ws_delivery;
