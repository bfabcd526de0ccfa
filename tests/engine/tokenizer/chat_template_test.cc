#include "engine/tokenizer/chat_template.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvserve::tokenizer {
namespace {

using ::testing::HasSubstr;

// Small templates written for these tests; they carry the markers the
// families are recognised by. The expected strings are what jinja2 renders
// for the corresponding real templates.
constexpr char kChatMlWithDefault[] =
    "{% for m in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are TestBot, a \\'careful\\' helper.<|im_end|>\n' }}"
    "{% endif %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
// Default system prompt in a double-quoted literal with escaped newlines,
// after a concatenated (non-literal) system block.
constexpr char kChatMlEscaped[] =
    "{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\\n' + messages[0].content + "
    "'<|im_end|>\\n' }}{%- else %}{{- \"<|im_start|>system\\nBe nice.\\nAlways.<|im_end|>\\n\" "
    "}}{%- endif %}";
constexpr char kChatMlPlain[] =
    "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}";
constexpr char kLlama3[] =
    "{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + "
    "m['content'] | trim + '<|eot_id|>' }}{% endfor %}";
constexpr char kLlama2[] = "{{ bos_token + '[INST] <<SYS>>\\n' }}";
constexpr char kMistral[] = "{{ bos_token }}{{ '[INST] ' + m['content'] + ' [/INST]' }}";

std::vector<ChatMessage> Chat(std::initializer_list<std::pair<const char*, const char*>> msgs) {
  std::vector<ChatMessage> out;
  for (const auto& [role, content] : msgs) out.push_back({role, content});
  return out;
}

std::string Render(std::string_view tmpl, const std::vector<ChatMessage>& msgs, bool gen = true) {
  auto r = ApplyChatTemplate(tmpl, msgs, gen, "<s>", "</s>");
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *r : "";
}

absl::Status RenderError(std::string_view tmpl, const std::vector<ChatMessage>& msgs) {
  auto r = ApplyChatTemplate(tmpl, msgs, true, "<s>", "</s>");
  EXPECT_FALSE(r.ok());
  return r.status();
}

TEST(TokenizerChatTemplateTest, RecognisesFamilies) {
  EXPECT_EQ(ParseChatTemplate(kChatMlPlain)->family, ChatTemplateFamily::kChatMl);
  EXPECT_EQ(ParseChatTemplate(kLlama3)->family, ChatTemplateFamily::kLlama3);
  EXPECT_EQ(ParseChatTemplate(kLlama2)->family, ChatTemplateFamily::kLlama2);
  EXPECT_EQ(ParseChatTemplate(kMistral)->family, ChatTemplateFamily::kMistral);
}

TEST(TokenizerChatTemplateTest, UnknownOrUnsupportedTemplatesAreErrors) {
  EXPECT_EQ(ParseChatTemplate("").status().code(), absl::StatusCode::kNotFound);
  auto unknown = ParseChatTemplate("{{ messages[0]['content'] }}");
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(unknown.status().message()), HasSubstr("<|im_start|>"));
  EXPECT_EQ(ParseChatTemplate("<|start_header_id|> Cutting Knowledge Date").status().code(),
            absl::StatusCode::kUnimplemented);
  EXPECT_EQ(ParseChatTemplate("[INST] [AVAILABLE_TOOLS]").status().code(),
            absl::StatusCode::kUnimplemented);
}

TEST(TokenizerChatTemplateTest, ExtractsTheDefaultSystemPrompt) {
  EXPECT_EQ(ParseChatTemplate(kChatMlWithDefault)->default_system_prompt,
            "You are TestBot, a 'careful' helper.");
  EXPECT_EQ(ParseChatTemplate(kChatMlEscaped)->default_system_prompt, "Be nice.\nAlways.");
  EXPECT_EQ(ParseChatTemplate(kChatMlPlain)->default_system_prompt, "");
}

TEST(TokenizerChatTemplateTest, ChatMlInsertsTheDefaultSystemMessage) {
  EXPECT_EQ(Render(kChatMlWithDefault, Chat({{"user", "Hello!"}})),
            "<|im_start|>system\nYou are TestBot, a 'careful' helper.<|im_end|>\n"
            "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(Render(kChatMlWithDefault, Chat({{"system", "Be brief."}, {"user", "2+2?"}}), false),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n");
}

TEST(TokenizerChatTemplateTest, ChatMlKeepsContentVerbatim) {
  EXPECT_EQ(
      Render(kChatMlPlain,
             Chat({{"user", "  hi there \n"}, {"assistant", " Hello!  "}, {"user", "é 😀\n\n"}})),
      "<|im_start|>user\n  hi there \n<|im_end|>\n<|im_start|>assistant\n Hello!  "
      "<|im_end|>\n<|im_start|>user\né 😀\n\n<|im_end|>\n<|im_start|>assistant\n");
}

TEST(TokenizerChatTemplateTest, Llama3TrimsContentAndStartsWithBos) {
  EXPECT_EQ(Render(kLlama3, Chat({{"system", "Be brief."}, {"user", "  hi \n"}})),
            "<s><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_EQ(Render(kLlama3, Chat({{"user", "x"}}), false),
            "<s><|start_header_id|>user<|end_header_id|>\n\nx<|eot_id|>");
}

TEST(TokenizerChatTemplateTest, Llama2FoldsTheSystemMessage) {
  EXPECT_EQ(
      Render(kLlama2,
             Chat({{"system", "sys"}, {"user", "u1"}, {"assistant", " a1 "}, {"user", "u2\n"}})),
      "<s>[INST] <<SYS>>\nsys\n<</SYS>>\n\nu1 [/INST] a1 </s><s>[INST] u2 [/INST]");
  EXPECT_EQ(Render(kLlama2, Chat({{"user", " q "}})), "<s>[INST] q [/INST]");
}

TEST(TokenizerChatTemplateTest, MistralAlternatesWithoutSystem) {
  EXPECT_EQ(Render(kMistral, Chat({{"user", "u1"}, {"assistant", "a1"}, {"user", "u2"}})),
            "<s>[INST] u1 [/INST]a1</s>[INST] u2 [/INST]");
  EXPECT_THAT(std::string(RenderError(kMistral, Chat({{"system", "s"}, {"user", "u"}})).message()),
              HasSubstr("only user and assistant"));
}

TEST(TokenizerChatTemplateTest, RoleErrors) {
  EXPECT_EQ(RenderError(kChatMlPlain, Chat({{"robot", "x"}})).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RenderError(kChatMlPlain, {}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(RenderError(kLlama2, Chat({{"user", "a"}, {"user", "b"}})).message()),
              HasSubstr("alternate"));
  EXPECT_THAT(std::string(RenderError(kMistral, Chat({{"assistant", "a"}})).message()),
              HasSubstr("alternate"));
}

TEST(TokenizerChatTemplateTest, PyStripMatchesPythonStrip) {
  EXPECT_EQ(PyStrip("  a b \n\t"), "a b");
  EXPECT_EQ(PyStrip("\u3000\u00a0x\u2028"), "x");
  EXPECT_EQ(PyStrip("\x1c\x1fy\x1e"), "y");              // str.isspace() accepts these
  EXPECT_EQ(PyStrip("\u200bz\u200b"), "\u200bz\u200b");  // zero-width space is not space
  EXPECT_EQ(PyStrip(" \n "), "");
  EXPECT_EQ(PyStrip(""), "");
}

}  // namespace
}  // namespace kvserve::tokenizer
