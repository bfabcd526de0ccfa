// Chat prompt formatting without a Jinja engine: the template family is
// recognised from the GGUF tokenizer.chat_template text and rendered by hand,
// byte-for-byte as the real template renders (checked against jinja2).
//
// Families:
//   * ChatML ("<|im_start|>"): "<|im_start|>{role}\n{content}<|im_end|>\n" per
//     message, "<|im_start|>assistant\n" as generation prompt. A default
//     system prompt written as a literal system block in the template (as in
//     SmolLM2's "You are a helpful AI assistant named SmolLM, ...") is
//     extracted and inserted when the first message is not a system message.
//   * Llama-3 ("<|start_header_id|>", the 3.0 form): bos, then
//     "<|start_header_id|>{role}<|end_header_id|>\n\n{trimmed content}<|eot_id|>".
//     The 3.1+ templates (knowledge-date system block, tools) are
//     Unimplemented.
//   * Llama-2 ("[INST]" with "<<SYS>>"): user turns "{bos}[INST] {content} [/INST]",
//     assistant turns " {content} {eos}", a leading system message folded into
//     the first user turn; roles must alternate user/assistant.
//   * Mistral ("[INST]" without "<<SYS>>", the v0.1 form): "{bos}" then
//     "[INST] {content} [/INST]" / "{content}{eos}"; only user and assistant
//     roles, alternating. Tool-calling forms ("[AVAILABLE_TOOLS]",
//     "[SYSTEM_PROMPT]") are Unimplemented.
//
// Roles are "system", "user" and "assistant"; anything else is an
// InvalidArgument error, as are orders a template rejects.
//
// Thread-safety: stateless functions and value types.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace kvserve::tokenizer {

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

enum class ChatTemplateFamily { kChatMl, kLlama3, kLlama2, kMistral };

struct ChatTemplateInfo {
  ChatTemplateFamily family = ChatTemplateFamily::kChatMl;
  // ChatML only: inserted as a system message when the first message is
  // not one; empty if the template has none.
  std::string default_system_prompt;
};

// Recognises the family of `tmpl`. Empty or unrecognised templates are
// errors (NotFound / Unimplemented) naming what was looked for.
absl::StatusOr<ChatTemplateInfo> ParseChatTemplate(std::string_view tmpl);

// Renders `messages`. `bos_text` / `eos_text` are the texts of the BOS and
// EOS tokens, used by the families whose templates emit them. The result is
// meant to be encoded with parse_special so its control tokens become ids;
// where the template already starts with bos_text, do not add another BOS.
absl::StatusOr<std::string> ApplyChatTemplate(const ChatTemplateInfo& info,
                                              const std::vector<ChatMessage>& messages,
                                              bool add_generation_prompt, std::string_view bos_text,
                                              std::string_view eos_text);
// ParseChatTemplate() followed by the above.
absl::StatusOr<std::string> ApplyChatTemplate(std::string_view tmpl,
                                              const std::vector<ChatMessage>& messages,
                                              bool add_generation_prompt, std::string_view bos_text,
                                              std::string_view eos_text);

// Python's str.strip() (what Jinja's trim filter and .strip() do): removes
// leading and trailing code points for which str.isspace() is true.
std::string PyStrip(std::string_view s);

}  // namespace kvserve::tokenizer
