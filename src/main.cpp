#include "cli/cli.h"

int main(int argc, char** argv) {
    return ka::cli::run(argc, argv);
}
