#include "agent/agent.h"

#include <chrono>
#include <fstream>
#include <set>
#include <sstream>

#include <fmt/chrono.h>
#include <fmt/format.h>

#include "log/log.h"

namespace ka::agent {
namespace {

using nlohmann::json;

std::string day(const std::string& timestamp) {
    return timestamp.substr(0, 10);
}

// Adds entries not yet listed, keeping first-use order.
void add_sources(Answer& answer, std::set<std::string>& seen,
                 const std::vector<store::Entry>& entries) {
    for (const auto& e : entries) {
        if (seen.insert(e.id).second) answer.sources.push_back(e);
    }
}

}  // namespace

json to_json(const Answer& answer) {
    json sources = json::array();
    for (const auto& e : answer.sources) {
        sources.push_back({{"id", e.id},
                           {"scope", e.scope},
                           {"content", e.content},
                           {"tags", e.tags},
                           {"created_at", e.created_at}});
    }
    json saved = json::array();
    for (const auto& e : answer.saved) saved.push_back({{"id", e.id}, {"content", e.content}});
    return {{"answer", answer.text},
            {"sources", sources},
            {"saved", saved},
            {"tool_rounds", answer.tool_rounds},
            {"model", answer.model.empty() ? json(nullptr) : json(answer.model)}};
}

Result<std::string> base_prompt(const config::Config& config) {
    if (config.agent.prompt_file.empty()) return config.agent.prompt;
    std::ifstream in(config.agent.prompt_file);
    if (!in)
        return fail(ErrorCode::config,
                    fmt::format("cannot read agent.prompt_file {}", config.agent.prompt_file),
                    "fix the path, or put the prompt inline in agent.prompt");
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
}

Agent::Agent(store::Store& store, llm::ChatModel* model, const config::Config& config,
             std::string base_prompt)
    : store_(store), model_(model), config_(config), base_prompt_(std::move(base_prompt)) {}

std::string Agent::system_prompt(const std::vector<store::Hit>& context) const {
    auto now = std::chrono::system_clock::now();
    std::string prompt = fmt::format(
        "You are {}, the knowledge agent of an engineering team. Today is {:%A, %Y-%m-%d} (UTC).\n"
        "Answer in the language of the question, briefly and concretely.\n"
        "Use search_memory to look up what the team saved before answering questions about its "
        "systems, processes, decisions or people. When the user tells you something worth "
        "keeping, save it with save_to_memory as a self-contained statement, writing relative "
        "dates (\"this Friday\", \"next week\") as real dates.\n"
        "Cite the ids of the entries you used in square brackets, e.g. [0190c1e2-...]. If the "
        "knowledge base has nothing relevant, say so instead of guessing.\n",
        config_.agent.name, fmt::gmtime(std::chrono::system_clock::to_time_t(now)));
    if (!base_prompt_.empty()) prompt += "\n" + base_prompt_ + "\n";
    if (!context.empty()) {
        prompt += "\nSaved knowledge that may answer the question (most relevant first):\n";
        for (const auto& h : context) {
            prompt += fmt::format("- [{}] (saved {}{}) {}\n", h.entry.id, day(h.entry.created_at),
                                  h.entry.tags.empty()
                                      ? ""
                                      : fmt::format(", tags: {}", fmt::join(h.entry.tags, ", ")),
                                  h.entry.content);
        }
    }
    return prompt;
}

Result<Answer> Agent::retrieval_only(const std::vector<store::Hit>& hits,
                                     const Events* events) const {
    Answer answer;
    if (hits.empty()) {
        answer.text =
            "No LLM is configured (llm.provider: none), and nothing saved matches your question.";
    } else {
        answer.text =
            "No LLM is configured (llm.provider: none), so here is the saved knowledge "
            "that best matches your question:\n";
        for (std::size_t i = 0; i < hits.size(); ++i) {
            const auto& e = hits[i].entry;
            answer.text += fmt::format("\n{}. [{}] (saved {}) {}\n", i + 1, e.id, day(e.created_at),
                                       e.content);
            answer.sources.push_back(e);
        }
    }
    if (events && events->on_text) events->on_text(answer.text);
    return answer;
}

Result<Answer> Agent::ask(const Question& question, const Events* events) {
    if (question.text.find_first_not_of(" \t\r\n") == std::string::npos)
        return fail(ErrorCode::invalid_argument, "the question is empty");
    std::vector<store::Hit> context;
    int k = model_ ? config_.agent.context_k : std::max(config_.agent.context_k, 1);
    if (k > 0) {
        store::SearchRequest r;
        r.query = question.text;
        r.k = std::min(k, config_.search.max_k);
        r.filters.scopes = question.caller.scopes;
        // Entries sharing nothing with the question (similarity 0) are noise, not context.
        r.min_similarity = 1e-6;
        auto hits = store_.search(r);
        if (!hits) return std::unexpected(hits.error());
        context = std::move(*hits);
    }
    if (!model_) return retrieval_only(context, events);

    Answer answer;
    answer.model = model_->model();
    std::set<std::string> seen;
    for (const auto& h : context) {
        if (seen.insert(h.entry.id).second) answer.sources.push_back(h.entry);
    }
    llm::ChatRequest request;
    request.system = system_prompt(context);
    request.tools = memory_tools();
    request.messages = question.history;
    request.messages.push_back({llm::Message::Role::user, question.text, {}, {}});
    // Text from successive rounds ("Let me look that up." then the answer) is kept apart by a
    // blank line, in the stream as in the answer.
    bool new_round = false;
    bool listening = true;
    llm::TextFn separated = [&](std::string_view delta) {
        if (delta.empty()) return true;
        if (new_round) listening = events->on_text("\n\n");
        new_round = false;
        return listening = listening && events->on_text(delta);
    };
    const llm::TextFn* on_text = events && events->on_text ? &separated : nullptr;
    auto abandoned = [] {
        log::info("Answer abandoned: its listener went away");
        return fail(ErrorCode::unavailable, "the answer's listener went away");
    };
    for (int round = 0;; ++round) {
        request.allow_tools = round < config_.agent.max_tool_rounds;
        new_round = !answer.text.empty();
        auto reply = model_->chat(request, on_text);
        if (!listening) return abandoned();
        if (!reply) return std::unexpected(reply.error());
        if (!answer.text.empty() && !reply->text.empty()) answer.text += "\n\n";
        answer.text += reply->text;
        if (reply->tool_calls.empty() || !request.allow_tools) break;
        answer.tool_rounds = round + 1;
        llm::Message results{llm::Message::Role::user, "", {}, {}};
        for (const auto& call : reply->tool_calls) {
            if (events && events->on_tool && !events->on_tool(call.name, call.arguments))
                return abandoned();
            auto outcome = run_tool(store_, question.caller, call.name, call.arguments);
            if (!outcome) {
                log::warn("Tool call refused",
                          {{"tool", call.name}, {"error", outcome.error().message}});
                results.tool_results.push_back({call.id, outcome.error().message, true});
                continue;
            }
            add_sources(answer, seen, outcome->found);
            if (outcome->saved) answer.saved.push_back(*outcome->saved);
            results.tool_results.push_back({call.id, outcome->result.dump(), false});
        }
        request.messages.push_back(
            {llm::Message::Role::assistant, reply->text, reply->tool_calls, {}});
        request.messages.push_back(std::move(results));
    }
    if (answer.text.empty())
        answer.text = fmt::format("I could not finish an answer within {} tool rounds.",
                                  config_.agent.max_tool_rounds);
    return answer;
}

}  // namespace ka::agent
