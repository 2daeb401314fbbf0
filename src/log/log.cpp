#include "log/log.h"

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>

#include <fmt/chrono.h>
#include <fmt/format.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "core/redact.h"

namespace ka::log {
namespace {

std::atomic<Level> min_level{Level::info};
std::atomic<Format> out_format{Format::console};

std::mutex logger_mutex;
std::shared_ptr<spdlog::logger>& logger() {
    static std::shared_ptr<spdlog::logger> instance = [] {
        auto l = std::make_shared<spdlog::logger>(
            "ka", std::make_shared<spdlog::sinks::stderr_sink_mt>());
        l->set_pattern("%v");
        l->set_level(spdlog::level::trace);
        return l;
    }();
    return instance;
}

std::string_view label(Level level) {
    switch (level) {
        case Level::debug:
            return "DEBUG";
        case Level::info:
            return "INFO";
        case Level::warn:
            return "WARN";
        case Level::error:
            return "ERROR";
    }
    return "INFO";
}

// key=value, quoting values that would otherwise be ambiguous.
void append_console_value(std::string& out, const std::string& value) {
    bool plain = !value.empty() && value.find_first_of(" \t\n\"=\\") == std::string::npos;
    if (plain) {
        out += value;
    } else {
        out += nlohmann::json(value).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    }
}

}  // namespace

void configure(std::string_view level, std::string_view format) {
    if (level == "debug")
        min_level = Level::debug;
    else if (level == "info")
        min_level = Level::info;
    else if (level == "warn")
        min_level = Level::warn;
    else if (level == "error")
        min_level = Level::error;
    if (format == "json")
        out_format = Format::json;
    else if (format == "console")
        out_format = Format::console;
}

bool enabled(Level level) {
    return level >= min_level.load();
}

std::string format_line(Level level, Format format, std::string_view message,
                        std::initializer_list<Field> fields) {
    if (format == Format::json) {
        nlohmann::json line;
        line["ts"] = fmt::format("{:%FT%T}Z", std::chrono::floor<std::chrono::milliseconds>(
                                                  std::chrono::system_clock::now()));
        std::string level_name(label(level));
        for (auto& c : level_name)
            c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        line["level"] = level_name;
        line["msg"] = redact(message);
        for (const auto& f : fields) line[std::string(f.key)] = redact(f.value);
        return line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    }
    std::string out = fmt::format("{:<5} {}", label(level), message);
    for (const auto& f : fields) {
        out += ' ';
        out += f.key;
        out += '=';
        append_console_value(out, f.value);
    }
    return redact(out);
}

void write(Level level, std::string_view message, std::initializer_list<Field> fields) {
    if (!enabled(level)) return;
    std::string line = format_line(level, out_format.load(), message, fields);
    std::lock_guard lock(logger_mutex);
    logger()->log(spdlog::level::info, line);
    logger()->flush();
}

void redirect(std::ostream* out) {
    std::lock_guard lock(logger_mutex);
    std::shared_ptr<spdlog::sinks::sink> sink;
    if (out)
        sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(*out, true);
    else
        sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
    sink->set_pattern("%v");
    logger()->sinks() = {sink};
}

}  // namespace ka::log
