#include "engine/tokenizer/chat_template.h"

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/tokenizer/string_view_compat.h"
#include "engine/tokenizer/unicode.h"

namespace kvserve::tokenizer {
namespace {

constexpr std::string_view kImStart = "<|im_start|>";
constexpr std::string_view kImEnd = "<|im_end|>";

bool Contains(std::string_view s, std::string_view needle) {
  return s.find(needle) != std::string_view::npos;
}

bool PyIsSpace(char32_t cp) { return IsWhitespace(cp) || (cp >= 0x1C && cp <= 0x1F); }

// Decodes the character at `pos` (strict enough for trimming: an invalid
// byte decodes as U+FFFD of length 1, which is not whitespace).
char32_t CharAt(std::string_view s, size_t pos, size_t* len) {
  const size_t avail = std::min<size_t>(4, s.size() - pos);
  const std::u32string cps = DecodeUtf8Lenient(s.substr(pos, avail));
  std::string first;
  AppendUtf8(cps[0], &first);
  const bool matches = s.substr(pos, first.size()) == first;
  *len = matches ? first.size() : 1;
  return matches ? cps[0] : kReplacementChar;
}

// Jinja string-literal escapes (a subset: \n \t \r \\ \' \").
std::string UnescapeJinja(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size()) {
      const char c = s[++i];
      switch (c) {
        case 'n':
          out.push_back('\n');
          break;
        case 't':
          out.push_back('\t');
          break;
        case 'r':
          out.push_back('\r');
          break;
        case '\\':
        case '\'':
        case '"':
          out.push_back(c);
          break;
        default:
          out.push_back('\\');
          out.push_back(c);
      }
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

// Finds a complete string literal 'im_start "system" newline ... im_end' and
// returns its system text, or "" if the template has none. Blocks built by
// concatenation (e.g. '<|im_start|>system\n' + messages[0]['content']) are
// not literals and are skipped.
std::string DefaultChatMlSystemPrompt(std::string_view tmpl) {
  const std::string head = absl::StrCat(AbslSv(kImStart), "system");
  for (size_t pos = tmpl.find(head); pos != std::string_view::npos;
       pos = tmpl.find(head, pos + 1)) {
    if (pos == 0) continue;
    const char quote = tmpl[pos - 1];
    if (quote != '\'' && quote != '"') continue;
    size_t body = pos + head.size();
    if (tmpl.substr(body, 1) == "\n") {
      body += 1;
    } else if (tmpl.substr(body, 2) == "\\n") {
      body += 2;
    } else {
      continue;
    }
    const size_t end = tmpl.find(kImEnd, body);
    if (end == std::string_view::npos) continue;
    const std::string_view text = tmpl.substr(body, end - body);
    // The literal must not close before <|im_end|>: no unescaped quote.
    bool closed = false;
    for (size_t i = 0; i < text.size(); ++i) {
      if (text[i] == '\\') {
        ++i;
      } else if (text[i] == quote) {
        closed = true;
        break;
      }
    }
    if (!closed && !text.empty()) return UnescapeJinja(text);
  }
  return "";
}

absl::Status CheckRoles(const std::vector<ChatMessage>& messages) {
  if (messages.empty()) return absl::InvalidArgumentError("chat has no messages");
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string& role = messages[i].role;
    if (role != "system" && role != "user" && role != "assistant") {
      return absl::InvalidArgumentError(absl::StrCat("message ", i, " has role '", role,
                                                     "'; expected system, user or assistant"));
    }
  }
  return absl::OkStatus();
}

std::string RenderChatMl(const ChatTemplateInfo& info, const std::vector<ChatMessage>& messages,
                         bool add_generation_prompt) {
  std::string out;
  if (!info.default_system_prompt.empty() && messages.front().role != "system") {
    absl::StrAppend(&out, AbslSv(kImStart), "system\n", info.default_system_prompt, AbslSv(kImEnd),
                    "\n");
  }
  for (const ChatMessage& m : messages) {
    absl::StrAppend(&out, AbslSv(kImStart), m.role, "\n", m.content, AbslSv(kImEnd), "\n");
  }
  if (add_generation_prompt) absl::StrAppend(&out, AbslSv(kImStart), "assistant\n");
  return out;
}

std::string RenderLlama3(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                         std::string_view bos) {
  std::string out(bos);
  for (const ChatMessage& m : messages) {
    absl::StrAppend(&out, "<|start_header_id|>", m.role, "<|end_header_id|>\n\n",
                    PyStrip(m.content), "<|eot_id|>");
  }
  if (add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  return out;
}

// Roles after an optional leading system message must alternate, starting
// with user.
absl::Status CheckAlternation(const std::vector<ChatMessage>& messages, size_t first) {
  for (size_t i = first; i < messages.size(); ++i) {
    const bool want_user = (i - first) % 2 == 0;
    if (messages[i].role != (want_user ? "user" : "assistant")) {
      return absl::InvalidArgumentError(
          absl::StrCat("message ", i, " has role '", messages[i].role,
                       "': conversation roles must alternate user/assistant/user/assistant/..."));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> RenderLlama2(const std::vector<ChatMessage>& messages,
                                         std::string_view bos, std::string_view eos) {
  const bool has_system = messages.front().role == "system";
  const size_t first = has_system ? 1 : 0;
  if (absl::Status s = CheckAlternation(messages, first); !s.ok()) return s;
  std::string out;
  for (size_t i = first; i < messages.size(); ++i) {
    std::string content = messages[i].content;
    if (i == first && has_system) {
      content = absl::StrCat("<<SYS>>\n", messages[0].content, "\n<</SYS>>\n\n", content);
    }
    if (messages[i].role == "user") {
      absl::StrAppend(&out, AbslSv(bos), "[INST] ", PyStrip(content), " [/INST]");
    } else {
      absl::StrAppend(&out, " ", PyStrip(content), " ", AbslSv(eos));
    }
  }
  return out;
}

absl::StatusOr<std::string> RenderMistral(const std::vector<ChatMessage>& messages,
                                          std::string_view bos, std::string_view eos) {
  for (size_t i = 0; i < messages.size(); ++i) {
    if (messages[i].role == "system") {
      return absl::InvalidArgumentError(
          absl::StrCat("message ", i,
                       " has role 'system'; this Mistral chat template supports only user "
                       "and assistant messages"));
    }
  }
  if (absl::Status s = CheckAlternation(messages, 0); !s.ok()) return s;
  std::string out(bos);
  for (const ChatMessage& m : messages) {
    if (m.role == "user") {
      absl::StrAppend(&out, "[INST] ", m.content, " [/INST]");
    } else {
      absl::StrAppend(&out, m.content, AbslSv(eos));
    }
  }
  return out;
}

}  // namespace

std::string PyStrip(std::string_view s) {
  size_t begin = std::string_view::npos;  // start of the first non-space character
  size_t end = 0;                         // end of the last non-space character
  for (size_t pos = 0; pos < s.size();) {
    size_t len = 0;
    const char32_t cp = CharAt(s, pos, &len);
    if (!PyIsSpace(cp)) {
      if (begin == std::string_view::npos) begin = pos;
      end = pos + len;
    }
    pos += len;
  }
  if (begin == std::string_view::npos) return std::string();
  return std::string(s.substr(begin, end - begin));
}

absl::StatusOr<ChatTemplateInfo> ParseChatTemplate(std::string_view tmpl) {
  if (tmpl.empty()) {
    return absl::NotFoundError("the model has no chat template (tokenizer.chat_template)");
  }
  ChatTemplateInfo info;
  if (Contains(tmpl, kImStart)) {
    info.family = ChatTemplateFamily::kChatMl;
    info.default_system_prompt = DefaultChatMlSystemPrompt(tmpl);
    return info;
  }
  if (Contains(tmpl, "<|start_header_id|>")) {
    if (Contains(tmpl, "Cutting Knowledge Date") || Contains(tmpl, "tools")) {
      return absl::UnimplementedError(
          "Llama-3.1+ chat templates (knowledge-date system block, tools) are not supported; "
          "only the Llama-3.0 form is");
    }
    info.family = ChatTemplateFamily::kLlama3;
    return info;
  }
  if (Contains(tmpl, "[INST]")) {
    if (Contains(tmpl, "[AVAILABLE_TOOLS]") || Contains(tmpl, "[SYSTEM_PROMPT]")) {
      return absl::UnimplementedError(
          "Mistral chat templates with tools or [SYSTEM_PROMPT] are not supported; only the "
          "v0.1 [INST] form and Llama-2 (<<SYS>>) are");
    }
    info.family =
        Contains(tmpl, "<<SYS>>") ? ChatTemplateFamily::kLlama2 : ChatTemplateFamily::kMistral;
    return info;
  }
  return absl::UnimplementedError(
      "unrecognised chat template: expected ChatML (<|im_start|>), Llama-3 "
      "(<|start_header_id|>) or Mistral/Llama-2 ([INST])");
}

absl::StatusOr<std::string> ApplyChatTemplate(const ChatTemplateInfo& info,
                                              const std::vector<ChatMessage>& messages,
                                              bool add_generation_prompt, std::string_view bos_text,
                                              std::string_view eos_text) {
  if (absl::Status s = CheckRoles(messages); !s.ok()) return s;
  switch (info.family) {
    case ChatTemplateFamily::kChatMl:
      return RenderChatMl(info, messages, add_generation_prompt);
    case ChatTemplateFamily::kLlama3:
      return RenderLlama3(messages, add_generation_prompt, bos_text);
    case ChatTemplateFamily::kLlama2:
      return RenderLlama2(messages, bos_text, eos_text);
    case ChatTemplateFamily::kMistral:
      return RenderMistral(messages, bos_text, eos_text);
  }
  return absl::InternalError("unknown chat template family");
}

absl::StatusOr<std::string> ApplyChatTemplate(std::string_view tmpl,
                                              const std::vector<ChatMessage>& messages,
                                              bool add_generation_prompt, std::string_view bos_text,
                                              std::string_view eos_text) {
  absl::StatusOr<ChatTemplateInfo> info = ParseChatTemplate(tmpl);
  if (!info.ok()) return info.status();
  return ApplyChatTemplate(*info, messages, add_generation_prompt, bos_text, eos_text);
}

}  // namespace kvserve::tokenizer
