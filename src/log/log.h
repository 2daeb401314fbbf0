// Structured logging: `INFO  message key=value` on the console or one JSON object per line.
// Every line passes through ka::redact(), so secrets never reach the log.
#pragma once

#include <initializer_list>
#include <ostream>
#include <string>
#include <string_view>

namespace ka::log {

enum class Level { debug, info, warn, error };
enum class Format { console, json };

struct Field {
    std::string_view key;
    std::string value;
};

// Level and format names as in the config (`log.level`, `log.format`); unknown names keep the
// default.
void configure(std::string_view level, std::string_view format);
bool enabled(Level level);

void write(Level level, std::string_view message, std::initializer_list<Field> fields = {});
inline void debug(std::string_view m, std::initializer_list<Field> f = {}) {
    write(Level::debug, m, f);
}
inline void info(std::string_view m, std::initializer_list<Field> f = {}) {
    write(Level::info, m, f);
}
inline void warn(std::string_view m, std::initializer_list<Field> f = {}) {
    write(Level::warn, m, f);
}
inline void error(std::string_view m, std::initializer_list<Field> f = {}) {
    write(Level::error, m, f);
}

// Renders one line without writing it (exposed for tests).
std::string format_line(Level level, Format format, std::string_view message,
                        std::initializer_list<Field> fields);

// Sends log lines to `out` instead of stderr; nullptr restores stderr. For tests.
void redirect(std::ostream* out);

}  // namespace ka::log
