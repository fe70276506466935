/*
 * AMX probe for tests/snapshots/test_xsave.py: ask the kernel for AMX tile data
 * (arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)), then run tile instructions
 * every 50 ms and write the count of rounds done to the file argv[1] (written whole
 * and renamed, so no file is open between rounds). A process that lost the permission
 * dies with SIGILL at its next round.
 *
 * Built by the test with: gcc -O1 -mamx-tile -o amx_probe amx_probe.c
 */
#define _GNU_SOURCE
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

struct tile_config {
	uint8_t palette_id;
	uint8_t start_row;
	uint8_t reserved[14];
	uint16_t colsb[16];
	uint8_t rows[16];
};

int main(int argc, char **argv)
{
	static struct tile_config cfg __attribute__((aligned(64)));
	static uint8_t out[16 * 64] __attribute__((aligned(64)));
	struct timespec tick = { 0, 50 * 1000 * 1000 };
	char tmp[4096], text[32];
	unsigned long round;

	if (argc != 2) {
		fprintf(stderr, "usage: %s COUNT_FILE\n", argv[0]);
		return 2;
	}
	if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)) {
		perror("arch_prctl(ARCH_REQ_XCOMP_PERM)");
		return 3;
	}
	snprintf(tmp, sizeof(tmp), "%s.tmp", argv[1]);
	memset(&cfg, 0, sizeof(cfg));
	cfg.palette_id = 1;
	cfg.rows[0] = 16;
	cfg.colsb[0] = 64;
	for (round = 1;; round++) {
		FILE *f;

		_tile_loadconfig(&cfg);
		_tile_zero(0);
		_tile_stored(0, out, 64);
		_tile_release();
		f = fopen(tmp, "w");
		if (!f)
			return 4;
		snprintf(text, sizeof(text), "%lu\n", round);
		fputs(text, f);
		fclose(f);
		rename(tmp, argv[1]);
		nanosleep(&tick, NULL);
	}
}
