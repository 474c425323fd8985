/*
 * kconfig-why: for each symbol named on the command line, print what the kernel's own
 * Kconfig says about it in a given .config: its value, where it is defined, the
 * dependencies of each definition with the current value of every symbol in them
 * (menu_get_ext_help), or "unknown" when this Kconfig tree does not define it.
 *
 * Built by testbed/kernel/kconfig_why.py against the objects scripts/kconfig already
 * compiled in the build directory (the same parser and the same semantics as make
 * allnoconfig), and run there with the environment Kconfig was evaluated with.
 *
 *     kconfig-why Kconfig .config SYMBOL...
 */
#include <stdio.h>
#include <string.h>

#include "lkc.h"

/* Depth-first search of the menu tree for the first entry of sym. */
static struct menu *find_entry(struct menu *m, struct symbol *sym)
{
	for (; m; m = m->next) {
		struct menu *found;

		if (m->sym == sym)
			return m;
		found = find_entry(m->list, sym);
		if (found)
			return found;
	}
	return NULL;
}

int main(int argc, char **argv)
{
	int i;

	if (argc < 3) {
		fprintf(stderr, "usage: %s Kconfig .config SYMBOL...\n", argv[0]);
		return 2;
	}
	conf_parse(argv[1]);
	if (conf_read(argv[2])) {
		fprintf(stderr, "%s: cannot read %s\n", argv[0], argv[2]);
		return 1;
	}
	for (i = 3; i < argc; i++) {
		struct symbol *sym = sym_find(argv[i]);
		struct menu *entry = sym ? find_entry(rootmenu.list, sym) : NULL;
		struct gstr help;

		printf("=== %s\n", argv[i]);
		if (!entry) {
			printf("unknown\n");
			continue;
		}
		help = str_new();
		menu_get_ext_help(entry, &help);
		fputs(str_get(&help), stdout);
		str_free(&help);
		printf("\n");
	}
	return 0;
}
