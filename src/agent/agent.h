// The agent: answers a question with the knowledge base. It searches memory with the question
// up front, then lets the model call search_memory / save_to_memory for a bounded number of
// rounds. Without a model (llm.provider none) it answers with the best matching entries.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/tools.h"
#include "config/config.h"
#include "llm/llm.h"
#include "store/store.h"

namespace ka::agent {

struct Question {
    std::string text;
    std::vector<llm::Message> history;  // earlier turns of the conversation, oldest first
    Caller caller;
};

struct Answer {
    std::string text;
    std::vector<store::Entry> sources;  // entries given to or found by the model, by first use
    std::vector<store::Entry> saved;    // entries saved through save_to_memory
    int tool_rounds = 0;
    std::string model;  // empty: retrieval-only
};
nlohmann::json to_json(const Answer& answer);

// Progress while answering: streamed text, and each tool call before it runs. Either returning
// false means nobody listens any more: the agent stops (no further model call, no tool run) and
// ask() fails with `unavailable`.
struct Events {
    llm::TextFn on_text;
    std::function<bool(const std::string& tool, const nlohmann::json& arguments)> on_tool;
};

class Agent {
  public:
    // `model` may be null: retrieval-only. `base_prompt` from agent::base_prompt().
    Agent(store::Store& store, llm::ChatModel* model, const config::Config& config,
          std::string base_prompt);

    Result<Answer> ask(const Question& question, const Events* events = nullptr);

    // The system prompt for today's date and the entries found up front.
    std::string system_prompt(const std::vector<store::Hit>& context) const;

  private:
    Result<Answer> retrieval_only(const std::vector<store::Hit>& hits, const Events* events) const;

    store::Store& store_;
    llm::ChatModel* model_;
    const config::Config& config_;
    std::string base_prompt_;
};

// Reads agent.prompt_file (when set) so a missing file fails at start, not on the first question.
Result<std::string> base_prompt(const config::Config& config);

}  // namespace ka::agent
