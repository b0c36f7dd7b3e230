// libedit (BSD editline) through its readline-compatible interface: line editing, history and
// completion for the client's interactive prompt. readline.h needs FILE declared first.
#include <stdio.h>
#include <editline/readline.h>

// libedit's settings are C globals, which Swift 6 does not let code assign; these set them.
static inline void p2p_editline_configure(const char *name, rl_completion_func_t *complete) {
    rl_readline_name = name;
    rl_attempted_completion_function = complete;
}
