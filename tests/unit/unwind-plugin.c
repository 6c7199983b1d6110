/* Loaded and unloaded by test-unwind: its frames sit in an object that the
 * loader unloads, so the layout tables see the loader's unload counter move. */
void plugin_call(void (*fn)(void));

__attribute__((noinline)) void plugin_call(void (*fn)(void))
{
    fn();
    __asm__ volatile("" ::: "memory");  /* not a tail call */
}
