// The knowledge-agent command line: parse, call the library, print. Exit codes in docs/cli.md.
#pragma once

namespace ka::cli {

int run(int argc, char** argv);

}  // namespace ka::cli
