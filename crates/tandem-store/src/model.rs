//! The data model. Names and JSON shapes here are public: they are what the
//! REST API, the WebSocket hub and the clients see.

mod enums;
mod ids;
mod inbox;
mod message;
mod thread;
mod token;
mod workflow;

pub use enums::*;
pub use ids::*;
pub use inbox::*;
pub use message::*;
pub use thread::*;
pub use token::*;
pub use workflow::*;
