/* dsw-exec: the run workers' trampoline as a program of its own (libc only, no daemon
 * libraries to load): PR_SET_PDEATHSIG, parent check, close descriptors, exec. See
 * include/dsw/trampoline.h. */
#include "dsw/trampoline.h"

int main(int argc, char **argv)
{
    return dsw_trampoline_main(argc, argv);
}
