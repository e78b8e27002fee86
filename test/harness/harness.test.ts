import { afterAll, describe, expect, it } from 'vitest';
import { connect } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { existsSync } from 'node:fs';
import { NatsCluster, NatsServer } from './nats-server.js';

describe('harness: single server', () => {
  let server: NatsServer | undefined;
  afterAll(async () => {
    await server?.stop();
  });

  it('keeps a published message across restart() and kill()+restart()', async () => {
    server = await NatsServer.start();
    const nc = await connect({ servers: server.url });
    const jsm = await jetstreamManager(nc);
    await jsm.streams.add({ name: 'H', subjects: ['h.>'] });
    await jetstream(nc).publish('h.one', 'before-restart');
    await nc.close();

    await server.restart();
    const nc2 = await connect({ servers: server.url });
    const jsm2 = await jetstreamManager(nc2);
    const m = await jsm2.streams.getMessage('H', { seq: 1 });
    expect(m?.string()).toBe('before-restart');
    await jetstream(nc2).publish('h.two', 'before-kill');
    await nc2.close();

    await server.restart({ kill: true });
    const nc3 = await connect({ servers: server.url });
    const info = await (await jetstreamManager(nc3)).streams.info('H');
    expect(info.state.messages).toBe(2);
    await nc3.close();

    const dir = server.dir;
    await server.stop();
    expect(existsSync(dir)).toBe(false);
    expect(server.child?.exitCode !== null || server.child?.signalCode !== null).toBe(true);
    server = undefined;
  });
});

describe('harness: 3-node cluster', () => {
  let cluster: NatsCluster | undefined;
  afterAll(async () => {
    await cluster?.stop();
  });

  it('keeps an R3 stream writable and readable after one node is SIGKILLed', async () => {
    cluster = await NatsCluster.start();
    const nc = await connect({ servers: cluster.urls });
    const jsm = await jetstreamManager(nc);
    await jsm.streams.add({ name: 'R3', subjects: ['r3.>'], num_replicas: 3 });
    const js = jetstream(nc);
    // The first writes go to the stream leader's own server: the stream's subject interest is
    // there as soon as the stream is created, while another node may learn it a moment later
    // over the route (a publish there then has no responders).
    const leader = (await jsm.streams.info('R3')).cluster?.leader;
    const victim = cluster.servers.find((s) => s.name === leader) ?? cluster.servers[0]!;
    const atLeader = await connect({ servers: victim.url });
    const jsLeader = jetstream(atLeader);
    for (let i = 0; i < 10; i++) await jsLeader.publish('r3.x', `m${i}`);
    await atLeader.close();

    // Kill the node that leads the stream: the harder case.
    await victim.kill();

    // Writes resume once a new leader is elected; the client reconnects on its own.
    let published = 0;
    const deadline = Date.now() + 30_000;
    while (published < 10 && Date.now() < deadline) {
      try {
        await js.publish('r3.x', `after${published}`, { timeout: 2000 });
        published++;
      } catch {
        await new Promise((r) => setTimeout(r, 200));
      }
    }
    expect(published).toBe(10);
    const info = await jsm.streams.info('R3');
    expect(info.state.messages).toBe(20);
    expect(info.cluster?.leader).not.toBe(victim.name);
    const first = await jsm.streams.getMessage('R3', { seq: 1 });
    expect(first?.string()).toBe('m0');
    await nc.close();
  });
});
