// The memory tools the agent's model and MCP clients call: search_memory and save_to_memory.
// One definition (schema + behaviour) shared by the agent loop and the MCP server.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "llm/llm.h"
#include "store/store.h"

namespace ka::agent {

using ToolSpec = llm::ToolSpec;

// search_memory(query, k?, tags?) and save_to_memory(content, tags?).
const std::vector<ToolSpec>& memory_tools();

// Who is calling a tool: the scopes it may use (empty: all) and whether it may save.
struct Caller {
    std::vector<std::string> scopes;
    bool may_write = false;
    std::string default_scope;  // where saves go; empty: the first scope, else store.default_scope
};

struct ToolOutcome {
    nlohmann::json result;              // what the model sees
    std::vector<store::Entry> found;    // entries a search returned
    std::optional<store::Entry> saved;  // the entry a save created or found
};

// Runs one tool call. Bad arguments, a refused save, or a store failure come back as errors
// whose message is meant for the model (it can correct itself).
Result<ToolOutcome> run_tool(store::Store& store, const Caller& caller, const std::string& name,
                             const nlohmann::json& arguments);

}  // namespace ka::agent
