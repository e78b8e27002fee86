import { describe, expect, it } from 'vitest';
import { levelOrder, nextProbeAt } from '../../src/engine/priority.js';
import { priorityOf } from '../../src/engine/activity.js';
import { createSubjects } from '../../src/contracts/subjects.js';

describe('priority levels', () => {
  it('strict order without aged levels; aged levels first, oldest first', () => {
    expect(levelOrder([], 1000, 500).order).toEqual([1, 2, 3, 4, 5]);
    const probes = [
      { level: 3, oldestAt: 400 }, // waited 600: aged
      { level: 4, oldestAt: 900 }, // waited 100
      { level: 5, oldestAt: 100 }, // waited 900: aged, older
      { level: 2, oldestAt: undefined },
    ];
    const { order, aged } = levelOrder(probes, 1000, 500);
    expect(order).toEqual([5, 3, 1, 2, 4]);
    expect([...aged].sort()).toEqual([3, 5]);
  });

  it('probes a level again only when a task of it can have aged', () => {
    expect(nextProbeAt({ level: 5, oldestAt: undefined }, 1000, 500)).toBe(1500);
    expect(nextProbeAt({ level: 5, oldestAt: 800 }, 1000, 500)).toBe(1300);
    expect(nextProbeAt({ level: 5, oldestAt: 100 }, 1000, 500)).toBe(1000);
  });

  it('a task level is the option or its function of the input; anything else is 3', () => {
    expect(priorityOf({}, {})).toBe(3);
    expect(priorityOf({ priority: 1 }, {})).toBe(1);
    expect(priorityOf({ priority: (i: { p: number }) => i.p }, { p: 5 })).toBe(5);
    expect(priorityOf({ priority: (i: { p: number }) => i.p }, { p: 7 })).toBe(3);
    expect(priorityOf({ priority: () => 2.5 }, {})).toBe(3);
    expect(
      priorityOf(
        {
          priority: () => {
            throw new Error('x');
          },
        },
        {},
      ),
    ).toBe(3);
  });

  it('level 3 keeps the queue subject; other levels have their own, outside other filters', () => {
    const s = createSubjects('wf');
    expect(s.task('q', 'K')).toBe('wf.task.q.K');
    expect(s.task('q', 'K', 1)).toBe('wf.task.q.p1.K');
    expect(s.taskRetry('q', 'K', 2, 5)).toBe('wf.task.q.p5.K.2');
    expect(s.taskFilter('q')).toBe('wf.task.q.*');
    expect(s.taskFilter('q', 4)).toBe('wf.task.q.p4.*');
  });
});
