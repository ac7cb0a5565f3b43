//! Tandem's types to and from `async-openai`'s.

use async_openai::types::chat::{
    ChatCompletionMessageToolCall, ChatCompletionMessageToolCalls,
    ChatCompletionRequestAssistantMessage, ChatCompletionRequestAssistantMessageContent,
    ChatCompletionRequestMessage, ChatCompletionRequestSystemMessage,
    ChatCompletionRequestSystemMessageContent, ChatCompletionRequestToolMessage,
    ChatCompletionRequestToolMessageContent, ChatCompletionRequestUserMessage,
    ChatCompletionRequestUserMessageContent, ChatCompletionStreamOptions, ChatCompletionTool,
    ChatCompletionTools, CompletionUsage, CreateChatCompletionRequest, FinishReason, FunctionCall,
    FunctionObject, ResponseFormat as OpenAiResponseFormat, ResponseFormatJsonSchema,
};

use crate::schema;
use crate::types::{ChatMessage, ChatRequest, ResponseFormat, ToolCall, ToolSpec, Usage};

/// The request body for `request` (`stream` is set by `async-openai`'s
/// `create_stream`).
pub(crate) fn chat_request(request: &ChatRequest) -> CreateChatCompletionRequest {
    CreateChatCompletionRequest {
        model: request.model.clone(),
        messages: request.messages.iter().map(message).collect(),
        tools: (!request.tools.is_empty()).then(|| request.tools.iter().map(tool).collect()),
        response_format: request.response_format.as_ref().map(response_format),
        stream_options: request.stream.then_some(ChatCompletionStreamOptions {
            include_usage: Some(true),
            include_obfuscation: None,
        }),
        ..CreateChatCompletionRequest::default()
    }
}

fn message(message: &ChatMessage) -> ChatCompletionRequestMessage {
    match message {
        ChatMessage::System(text) => {
            ChatCompletionRequestMessage::System(ChatCompletionRequestSystemMessage {
                content: ChatCompletionRequestSystemMessageContent::Text(text.clone()),
                name: None,
            })
        }
        ChatMessage::User(text) => {
            ChatCompletionRequestMessage::User(ChatCompletionRequestUserMessage {
                content: ChatCompletionRequestUserMessageContent::Text(text.clone()),
                name: None,
            })
        }
        ChatMessage::Assistant {
            name,
            text,
            tool_calls,
        } => ChatCompletionRequestMessage::Assistant(ChatCompletionRequestAssistantMessage {
            content: text
                .clone()
                .map(ChatCompletionRequestAssistantMessageContent::Text),
            name: name.clone(),
            tool_calls: (!tool_calls.is_empty()).then(|| {
                tool_calls
                    .iter()
                    .map(|call| {
                        ChatCompletionMessageToolCalls::Function(ChatCompletionMessageToolCall {
                            id: call.id.clone(),
                            // Arguments that are not a JSON object would
                            // make some servers refuse the whole request.
                            function: FunctionCall {
                                name: call.name.clone(),
                                arguments: schema::sendable_arguments(&call.arguments),
                            },
                        })
                    })
                    .collect()
            }),
            ..ChatCompletionRequestAssistantMessage::default()
        }),
        ChatMessage::Tool {
            tool_call_id,
            content,
        } => ChatCompletionRequestMessage::Tool(ChatCompletionRequestToolMessage {
            content: ChatCompletionRequestToolMessageContent::Text(content.clone()),
            tool_call_id: tool_call_id.clone(),
        }),
    }
}

fn tool(spec: &ToolSpec) -> ChatCompletionTools {
    ChatCompletionTools::Function(ChatCompletionTool {
        function: FunctionObject {
            name: spec.name.clone(),
            description: Some(spec.description.clone()),
            parameters: Some(spec.parameters.clone()),
            strict: None,
        },
    })
}

/// `json_schema`, strict whenever the schema can be made strict.
fn response_format(format: &ResponseFormat) -> OpenAiResponseFormat {
    let (schema, strict) = match schema::strict(&format.schema) {
        Some(schema) => (schema, true),
        None => (format.schema.clone(), false),
    };
    OpenAiResponseFormat::JsonSchema {
        json_schema: ResponseFormatJsonSchema {
            description: None,
            name: format.name.clone(),
            schema,
            strict: Some(strict),
        },
    }
}

pub(crate) fn tool_call(call: ChatCompletionMessageToolCalls) -> ToolCall {
    match call {
        ChatCompletionMessageToolCalls::Function(call) => ToolCall {
            id: call.id,
            name: call.function.name,
            arguments: call.function.arguments,
        },
        ChatCompletionMessageToolCalls::Custom(call) => ToolCall {
            id: call.id,
            name: call.custom_tool.name,
            arguments: call.custom_tool.input,
        },
    }
}

pub(crate) fn usage(usage: &CompletionUsage) -> Usage {
    Usage {
        prompt_tokens: usage.prompt_tokens,
        completion_tokens: usage.completion_tokens,
        total_tokens: usage.total_tokens,
    }
}

pub(crate) fn finish_reason(reason: FinishReason) -> String {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::ContentFilter => "content_filter",
        FinishReason::FunctionCall => "function_call",
    }
    .to_owned()
}
