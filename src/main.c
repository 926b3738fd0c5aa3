/* main: placeholder until the command line lands. */
#include <stdio.h>
int main(void)
{
    puts("dagster-sqs-worker " DSW_VERSION);
    return 0;
}
