/* main: the command line (SPEC §9): global options, one command, and the exit codes
 * 0 ok, 1 runtime failure, 64 usage (also: exec's file cannot be read), 69 a dependency
 * unreachable, 78 configuration. */
#include "dsw/admin.h"
#include "dsw/conf.h"
#include "dsw/log.h"
#include "dsw/proc.h"
#include "dsw/warm.h"
#include "dsw/worker.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

extern char **environ;

enum { EXIT_OK = 0, EXIT_FAIL = 1, EXIT_USAGE = 64, EXIT_UNAVAILABLE = 69, EXIT_CONFIG = 78 };

#define PROG "dagster-sqs-worker"

struct cli {
    const char *config;
    const char *log_level;
    const char *log_format;
    const char *command;
    int argc; /* the command's own arguments */
    char **argv;
    int connect;
    int help;
};

#define OPTIONS_TEXT                                                                               \
    "global options:\n"                                                                            \
    "  -c, --config FILE   configuration file (default " DSW_CONF_DEFAULT_PATH " if it exists,\n"  \
    "                      else the environment alone: DSW_<SECTION>_<KEY>)\n"                     \
    "      --log-level L   debug, info, warn or error (overrides log.level)\n"                     \
    "      --log-format F  text or json (overrides log.format)\n"                                  \
    "  -h, --help          print this help and exit\n"

static const char usage_text[] =
    "usage: " PROG " [-c FILE] [--log-level L] [--log-format text|json] COMMAND [ARGS]\n"
    "\n"
    "Executes Dagster runs delivered through an SQS-compatible queue.\n"
    "\n"
    "commands (" PROG " COMMAND --help for one command's help):\n"
    "  run                 the daemon, in the foreground (default command)\n"
    "  check-config        validate the configuration; --connect also reaches Postgres and\n"
    "                      the queue\n"
    "  db-init             create or upgrade the claims schema in the Dagster database\n"
    "  once                receive and process at most one message, then exit\n"
    "  exec FILE|-         process one message body from a file or stdin, no queue involved\n"
    "  enqueue RUN_ID      send an execute_job message for an existing run\n"
    "  status              queue depth, in-flight and stale claims, per worker\n"
    "\n" OPTIONS_TEXT "  -V, --version       print the version and exit\n"
    "\n"
    "exit codes: 0 ok, 1 runtime failure, 64 usage, 69 dependency unreachable, 78 configuration\n";

/* Each command: its arguments, what it needs from the configuration (checked first, exit 78)
 * and its own help. */
static const struct command {
    const char *name;
    int nargs; /* exactly this many arguments */
    unsigned needs;
    const char *synopsis, *help;
} commands[] = {
    {"run", 0, DSW_CONF_NEED_QUEUE | DSW_CONF_NEED_DB | DSW_CONF_NEED_RUNS, "run",
     "The daemon, in the foreground: receive messages, claim and execute their runs, record\n"
     "the outcomes. SIGTERM/SIGINT drain (a second one terminates the runs now); SIGHUP reloads\n"
     "log.level and runs.max_concurrent. It waits for PostgreSQL and the queue when they are\n"
     "away. Exit 0 after a drain, 78 on a configuration error (also: the claims schema is\n"
     "missing; run db-init).\n"},
    {"check-config", 0, DSW_CONF_NEED_QUEUE | DSW_CONF_NEED_DB | DSW_CONF_NEED_RUNS,
     "check-config [--connect]",
     "Validate the configuration (file and DSW_* environment) and print every key's effective\n"
     "value; with runs.warm > 0 also that runs.python and the warm runner are there. Exit 0\n"
     "when valid, 78 naming the source, line and key otherwise.\n"
     "\n"
     "  --connect           also reach PostgreSQL (and check the schema) and the queue; exit 69\n"
     "                      when one of them does not answer\n"},
    {"db-init", 0, DSW_CONF_NEED_DB, "db-init",
     "Create or upgrade the dagster_sqs_worker schema in the Dagster database (Dagster's own\n"
     "tables are never altered); idempotent. The password comes from PGPASSWORD or a password\n"
     "file: PGPASSFILE, else $CREDENTIALS_DIRECTORY/pgpass, else " DSW_CONF_PGPASS_DEFAULT_PATH
     ".\n"
     "Exit 0, or 69 when PostgreSQL does not answer within postgres.connect_timeout.\n"},
    {"once", 0, DSW_CONF_NEED_QUEUE | DSW_CONF_NEED_DB | DSW_CONF_NEED_RUNS, "once",
     "Receive at most one message (waiting queue.wait_time), process it to the end and exit.\n"
     "Exit 0 when it was processed or none arrived, 1 when it was rejected or failed, 69 when\n"
     "PostgreSQL is unreachable for postgres.connect_timeout.\n"},
    {"exec", 1, DSW_CONF_NEED_DB | DSW_CONF_NEED_RUNS, "exec FILE|-",
     "Process one message body read from FILE (or stdin for -), as if it had been received;\n"
     "no queue is involved. The file is opened before anything connects. Exit 0 when it was\n"
     "processed, 1 when it was rejected or failed, 64 when FILE cannot be read, 69 when\n"
     "PostgreSQL is unreachable for postgres.connect_timeout.\n"},
    {"enqueue", 1, DSW_CONF_NEED_QUEUE | DSW_CONF_NEED_DB, "enqueue RUN_ID",
     "Send an execute_job TaskIQ envelope for an existing run (re-queue it); a NOT_STARTED or\n"
     "QUEUED run is first moved to STARTING as Dagster does. Prints the message id. Exit 1\n"
     "when the run is already finished, 64 for a malformed run id, 69 when a dependency does\n"
     "not answer.\n"},
    {"status", 0, DSW_CONF_NEED_QUEUE | DSW_CONF_NEED_DB, "status",
     "Print the queue's depth and the unfinished claims per worker, live or stale.\n"},
};

static const struct command *find_command(const char *name)
{
    for (size_t i = 0; i < DSW_ARRAY_LEN(commands); i++)
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    return NULL;
}

/* The one-shot commands print their own results: info lines (which credentials, a reconnect)
 * would only be noise, unless asked for. */
static int is_admin(const char *command)
{
    return !strcmp(command, "db-init") || !strcmp(command, "enqueue") ||
           !strcmp(command, "status") || !strcmp(command, "check-config");
}

static void print_help(const struct command *cmd)
{
    if (!cmd) {
        fputs(usage_text, stdout);
        return;
    }
    printf("usage: " PROG " [global options] %s\n\n%s\n" OPTIONS_TEXT, cmd->synopsis, cmd->help);
    if (is_admin(cmd->name))
        printf("\nIt logs warnings and errors only, unless --log-level says otherwise.\n");
}

/* "dagster-sqs-worker: WHAT 'ARG' (try 'dagster-sqs-worker [COMMAND] --help')" */
static int usage_error(const char *what, const char *arg, const char *command)
{
    fprintf(stderr, PROG ": %s '%s' (try '" PROG "%s%s --help')\n", what, arg, command ? " " : "",
            command ? command : "");
    return EXIT_USAGE;
}

/* getopt's ':' (a missing argument) or '?' (an unknown option), in our words. */
static int option_error(int c, char **argv)
{
    const char *arg = argv[optind - 1];
    if (c == ':' && strncmp(arg, "--", 2) != 0)
        fprintf(stderr, PROG ": option '-%c' needs an argument (try '" PROG " --help')\n", optopt);
    else if (c == ':')
        fprintf(stderr, PROG ": option '%s' needs an argument (try '" PROG " --help')\n", arg);
    if (c == ':')
        return EXIT_USAGE;
    char opt[3] = {'-', (char)optopt, '\0'};
    return usage_error("unknown option", optopt ? opt : arg, NULL);
}

static int parse_options(int argc, char **argv, struct cli *cli)
{
    enum { OPT_LEVEL = 256, OPT_FORMAT, OPT_CONNECT };
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"log-level", required_argument, NULL, OPT_LEVEL},
        {"log-format", required_argument, NULL, OPT_FORMAT},
        {"connect", no_argument, NULL, OPT_CONNECT},
        {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c;
    opterr = 0; /* our own messages: the program's name, not argv[0]'s path */
    while ((c = getopt_long(argc, argv, ":c:Vh", opts, NULL)) != -1) {
        if (c == 'c')
            cli->config = optarg;
        else if (c == OPT_LEVEL)
            cli->log_level = optarg;
        else if (c == OPT_FORMAT)
            cli->log_format = optarg;
        else if (c == OPT_CONNECT)
            cli->connect = 1;
        else if (c == 'h')
            cli->help = 1; /* after the loop: the command's own help when one is named */
        else if (c == 'V') {
            printf("dagster-sqs-worker %s\n", DSW_VERSION);
            exit(EXIT_OK);
        } else
            return option_error(c, argv);
    }
    return 0;
}

/* What getopt left (it permuted the options first): the command and its arguments. */
static int parse_command(int argc, char **argv, struct cli *cli)
{
    cli->command = optind < argc ? argv[optind++] : NULL;
    if (cli->help) {
        const struct command *cmd = cli->command ? find_command(cli->command) : NULL;
        if (cli->command && !cmd)
            return usage_error("unknown command", cli->command, NULL);
        print_help(cmd);
        exit(EXIT_OK);
    }
    if (!cli->command)
        cli->command = "run";
    cli->argv = dsw_xcalloc((size_t)(argc - optind) + 1, sizeof(char *));
    for (; optind < argc; optind++)
        cli->argv[cli->argc++] = argv[optind];
    const struct command *cmd = find_command(cli->command);
    if (!cmd)
        return usage_error("unknown command", cli->command, NULL);
    if (cli->connect && strcmp(cli->command, "check-config"))
        return usage_error("--connect goes with check-config, not", cli->command, cli->command);
    if (cli->argc > cmd->nargs)
        return usage_error("unexpected argument", cli->argv[cmd->nargs], cli->command);
    if (cli->argc < cmd->nargs)
        return usage_error("one argument is needed by", cli->command, cli->command);
    return 0;
}

static int parse_cli(int argc, char **argv, struct cli *cli)
{
    int rc = parse_options(argc, argv, cli);
    return rc ? rc : parse_command(argc, argv, cli);
}

/* exec FILE: open the input before anything else (a bad path fails at once, not after the
 * connections are up) and make it our stdin, which the worker reads as "-". */
static int open_exec_input(struct cli *cli)
{
    const char *path = cli->argv[0];
    struct stat st;
    if (strcmp(path, "-") == 0)
        return 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    int e = fd < 0 ? errno : 0;
    if (fd >= 0 && fstat(fd, &st) != 0)
        e = errno;
    else if (fd >= 0 && S_ISDIR(st.st_mode))
        e = EISDIR;
    if (!e && fd != 0 && dup2(fd, 0) < 0)
        e = errno;
    if (fd > 0)
        close(fd);
    if (e) {
        fprintf(stderr, PROG ": exec: cannot read %s: %s\n", path, strerror(e));
        return EXIT_USAGE;
    }
    cli->argv[0] = "-";
    return 0;
}

static int load_conf(const struct cli *cli, struct dsw_conf *conf)
{
    char err[DSW_CONF_ERR_MAX];
    const char *path = cli->config;
    if (!path && access(DSW_CONF_DEFAULT_PATH, F_OK) == 0)
        path = DSW_CONF_DEFAULT_PATH;
    if (dsw_conf_load(conf, path, environ, err)) {
        fprintf(stderr, "dagster-sqs-worker: %s\n", err);
        return EXIT_CONFIG;
    }
    enum dsw_log_level level = (enum dsw_log_level)conf->log.level;
    enum dsw_log_format format = (enum dsw_log_format)conf->log.format;
    if (cli->log_level && dsw_log_level_parse(cli->log_level, &level)) {
        dsw_conf_free(conf);
        return usage_error("bad --log-level", cli->log_level, NULL);
    }
    if (cli->log_format && dsw_log_format_parse(cli->log_format, &format)) {
        dsw_conf_free(conf);
        return usage_error("bad --log-format", cli->log_format, NULL);
    }
    conf->log.level = level;
    conf->log.format = format;
    if (!cli->log_level && is_admin(cli->command) && level == DSW_LOG_INFO)
        level = DSW_LOG_WARN; /* the threshold only: check-config prints what is configured */
    dsw_log_setup(level, format, 2);
    for (size_t i = 0; i < conf->nwarnings; i++)
        dsw_warn("%s", conf->warnings[i]);
    return 0;
}

static int require(const struct dsw_conf *conf, unsigned needs)
{
    char err[DSW_CONF_ERR_MAX];
    int rc = dsw_conf_require(conf, needs, environ, err);
    if (rc)
        fprintf(stderr, "dagster-sqs-worker: %s\n", err);
    return rc ? EXIT_CONFIG : 0;
}

static void print_key(const char *section, const char *key, const char *value, void *arg)
{
    const char **last = arg;
    if (!*last || strcmp(*last, section)) {
        printf("%s[%s]\n", *last ? "\n" : "", section);
        *last = section;
    }
    printf("%s = %s\n", key, value);
}

/* runs.warm > 0: the interpreter and the runner must be there (the daemon would otherwise
 * start, then fail or retry runners forever). */
static int require_warm(const struct dsw_conf *conf)
{
    char err[8192];
    if (conf->runs.warm <= 0 ||
        dsw_warm_check(conf->runs.python, conf->runs.warm_runner, err, sizeof(err)) == 0)
        return 0;
    fprintf(stderr, PROG ": %s: %s\n", conf->path ? conf->path : "env", err);
    return EXIT_CONFIG;
}

static int cmd_check_config(const struct cli *cli, const struct dsw_conf *conf)
{
    int rc = require(conf, DSW_CONF_NEED_QUEUE | DSW_CONF_NEED_DB | DSW_CONF_NEED_RUNS);
    if (!rc)
        rc = require_warm(conf);
    if (rc)
        return rc;
    if (cli->connect)
        return dsw_admin_check_connect(conf);
    const char *last = NULL;
    dsw_conf_visit(conf, print_key, &last);
    fprintf(stderr, "dagster-sqs-worker: configuration %s is valid\n",
            conf->path ? conf->path : "(environment)");
    return EXIT_OK;
}

static int dispatch(const struct cli *cli, const struct dsw_conf *conf)
{
    const char *c = cli->command;
    if (strcmp(c, "check-config") == 0)
        return cmd_check_config(cli, conf);
    int rc = require(conf, find_command(c)->needs);
    if (!rc && (strcmp(c, "run") == 0 || strcmp(c, "once") == 0))
        rc = require_warm(conf);
    if (rc)
        return rc;
    if (strcmp(c, "db-init") == 0)
        return dsw_admin_db_init(conf);
    if (strcmp(c, "exec") == 0)
        return dsw_worker_main(conf, DSW_WORKER_EXEC, cli->argv[0]);
    if (strcmp(c, "enqueue") == 0)
        return dsw_admin_enqueue(conf, cli->argv[0]);
    if (strcmp(c, "status") == 0)
        return dsw_admin_status(conf);
    if (strcmp(c, "once") == 0)
        return dsw_worker_main(conf, DSW_WORKER_ONCE, NULL);
    return dsw_worker_main(conf, DSW_WORKER_RUN, NULL);
}

int main(int argc, char **argv)
{
    /* The child trampoline (PR_SET_PDEATHSIG, then exec) runs before anything else. */
    if (argc > 1 && strcmp(argv[1], DSW_PROC_TRAMPOLINE_ARG) == 0)
        return dsw_proc_trampoline_main(argc, argv);
    struct cli cli = {0};
    struct dsw_conf conf;
    int rc = parse_cli(argc, argv, &cli);
    if (!rc && strcmp(cli.command, "exec") == 0)
        rc = open_exec_input(&cli);
    if (!rc)
        rc = load_conf(&cli, &conf);
    if (rc) {
        free(cli.argv);
        return rc;
    }
    rc = dispatch(&cli, &conf);
    dsw_conf_free(&conf);
    free(cli.argv);
    return rc;
}
