//! The data model. Names and JSON shapes here are public: they are what the
//! REST API, the WebSocket hub and the clients see.

mod desk;
mod desk_metrics;
mod enums;
mod ids;
mod inbox;
mod message;
mod routing;
mod thread;
mod token;
mod usage;
mod web_access;
mod workflow;

pub use desk::*;
pub use desk_metrics::*;
pub use enums::*;
pub use ids::*;
pub use inbox::*;
pub use message::*;
pub use routing::*;
pub use thread::*;
pub use token::*;
pub use usage::*;
pub use web_access::*;
pub use workflow::*;
