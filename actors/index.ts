/** The workflows an engine hosts by default (`jetflow engine` without `--workflows`). */
import type { WorkflowDefinition } from '../src/engine/registry.js';
import { merchantPayment } from './merchant-payment.js';
import { order } from './order.js';
import { activityTree } from './activity-tree.js';

export const workflows: WorkflowDefinition[] = [merchantPayment, order, activityTree()];
export default workflows;
