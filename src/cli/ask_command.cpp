// `knowledge-agent ask "question"`: the agent from the command line, answer streamed.
#include <unistd.h>

#include <algorithm>
#include <iostream>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include "agent/agent.h"
#include "cli/common.h"
#include "llm/llm.h"

namespace ka::cli {
namespace {

struct AskOptions {
    std::string question;
    std::string scope;
    bool read_only = false;
    bool json = false;
};

int ask(const Globals& g, const AskOptions& o) {
    int exit = 0;
    auto s = open_services(g, exit);
    if (!s) return exit;
    auto model = llm::make_chat_model(s->config);
    if (!model) return report("Cannot set up the LLM provider", model.error());
    auto prompt = agent::base_prompt(s->config);
    if (!prompt) return report("Cannot set up the agent", prompt.error());
    agent::Agent agent(*s->store, model->get(), s->config, std::move(*prompt));

    agent::Question q;
    q.text = o.question;
    q.caller.may_write = !o.read_only;
    if (!o.scope.empty()) {
        q.caller.scopes = {o.scope};
        q.caller.default_scope = o.scope;
    }
    agent::Events events;
    events.on_text = [](std::string_view delta) {
        std::cout << delta << std::flush;
        return true;
    };
    events.on_tool = [](const std::string& tool, const nlohmann::json& arguments) {
        if (isatty(STDERR_FILENO)) std::cerr << fmt::format("\n[{} {}]\n", tool, arguments.dump());
        return true;
    };
    auto answer = agent.ask(q, o.json ? nullptr : &events);
    if (!answer) return report("Cannot answer", answer.error());
    if (o.json) {
        std::cout << agent::to_json(*answer).dump(2) << "\n";
        return 0;
    }
    std::cout << "\n";
    if (answer->model.empty()) return 0;  // retrieval-only answers list their sources already
    if (!answer->sources.empty()) std::cout << "\nSources:\n";
    for (const auto& e : answer->sources) {
        std::string line = e.content.substr(0, 100);
        std::replace(line.begin(), line.end(), '\n', ' ');
        std::cout << fmt::format("  [{}] {} {}{}\n", e.id, e.created_at.substr(0, 10), line,
                                 e.content.size() > 100 ? "…" : "");
    }
    for (const auto& e : answer->saved) std::cout << fmt::format("Saved: [{}]\n", e.id);
    return 0;
}

}  // namespace

void add_ask_command(CLI::App& app, const Globals& g, int& exit) {
    auto o = std::make_shared<AskOptions>();
    auto* cmd = app.add_subcommand("ask", "ask the agent; it answers from saved knowledge");
    cmd->add_option("question", o->question, "the question")->required();
    cmd->add_option("--scope", o->scope, "search and save only in this scope");
    cmd->add_flag("--read-only", o->read_only, "never save to memory");
    cmd->add_flag("--json", o->json, "machine-readable answer with sources (no streaming)");
    cmd->callback([&g, &exit, o] { exit = ask(g, *o); });
}

}  // namespace ka::cli
